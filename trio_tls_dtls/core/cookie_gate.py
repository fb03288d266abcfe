"""The DTLS cookie gate: what an endpoint does with one datagram (sans-IO).

A DTLS endpoint receives every datagram for every peer on one socket. Before
anything else happens to a datagram, :func:`decide` looks at its bytes, at
who sent it and at what the endpoint knows about that sender, and returns
one decision:

:class:`Drop` (*reason*)
    Ignore it. The reason is the ``reason`` label of
    ``trio_tlsd_dtls_datagrams_dropped_total``: ``oversized`` (longer than
    any DTLS record), ``empty``, ``draining`` (the endpoint admits no new
    peers), ``not_handshake`` (from an unknown address, anything but a
    handshake record), ``malformed`` (not a well-formed, unfragmented
    epoch-0 ClientHello) and ``too_small_to_answer`` (the answer would be
    larger than the datagram).
:class:`Deliver` (*what*)
    Hand it to the known peer at that address, whose OpenSSL connection
    judges it: an ordinary record, the peer's retransmitted ClientHello,
    or something that looks like a ClientHello but does not parse.
:class:`Reply` (*hello_verify_request*, *cookie_rejected*)
    Send the HelloVerifyRequest: the ClientHello had no cookie, or one that
    does not verify for this address (then *cookie_rejected*).
:class:`Admit` (*hello_id*, *replaces_peer*)
    The ClientHello carries a cookie issued to this address: start a peer.

The order of the checks is the security argument, so here it is in full::

    longer than any DTLS record?                     Drop oversized
    empty?                                           Drop empty
    known peer, and not ClientHello-shaped?          Deliver record      (the hot path)
    draining?                                        Drop draining
    not a handshake record?                          Drop not_handshake
    not a parseable ClientHello?                     Deliver malformed to a known peer,
                                                     else Drop malformed
    the known peer's own ClientHello again?          Deliver retransmission
    cookie verifies for this address and time?       Admit
    HelloVerifyRequest larger than the datagram?     Drop too_small_to_answer
    otherwise                                        Reply

Invariants, each kept by one line below:

* **No state before a valid cookie.** :class:`Admit` is returned only after
  :meth:`CookieSecrets.verify` accepted the cookie for exactly this address
  at this time. Nothing else in this module outlives the call.
* **No amplification.** A :class:`Reply` is never larger than the datagram
  it answers.
* **Existing peers are cheap.** A known peer's datagram that does not look
  like a ClientHello costs two length checks and a few byte comparisons,
  and no allocation: the Drop and Deliver decisions are shared constants.
* **Draining admits nobody.** Known peers are still served while the
  endpoint drains; every ClientHello is dropped.

What the gate does not decide: whether the peer table has room (a full
table evicts its longest idle peer, the driver's business), the per-source
limits (they count proven sources, after :class:`Admit`), and whether a
delivered datagram fits the peer's queue.

The gate reads no clock: the endpoint passes the wall-clock time the cookie
epochs follow (see :mod:`.dtls_cookie`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from .dtls_cookie import CookieSecrets
from .dtls_records import (
    HANDSHAKE,
    MAX_DTLS_DATAGRAM,
    build_hello_verify_request,
    cookie_input,
    looks_like_client_hello,
    parse_client_hello,
)
from .errors import RecordParseError
from .peer_info import Address

__all__ = ["Admit", "Decision", "Deliver", "Drop", "Reply", "decide"]


@dataclass(frozen=True, slots=True)
class Drop:
    """Ignore the datagram and count it under *reason*."""

    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Queue the datagram for the known peer at its address.

    *what* says why (``record``, ``retransmission`` or ``malformed_hello``);
    the endpoint treats all three alike and the peer's OpenSSL judges them.
    """

    what: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send *hello_verify_request* back to the sender; nothing else."""

    hello_verify_request: bytes
    cookie_rejected: bool
    """The ClientHello carried a cookie that did not verify (counted as rejected)."""


@dataclass(frozen=True, slots=True)
class Admit:
    """A cookie issued to this address: start a peer with this ClientHello.

    *hello_id* identifies the handshake attempt (:func:`.dtls_records.cookie_input`),
    so a retransmission of the same ClientHello is told from a restart.
    *replaces_peer* is true when a known peer at the address gives way.
    """

    hello_id: bytes
    replaces_peer: bool


Decision: TypeAlias = Drop | Deliver | Reply | Admit

# Shared instances: the decisions that carry nothing of the datagram are
# made once, so dropping and delivering allocate nothing.
_OVERSIZED = Drop("oversized")
_EMPTY = Drop("empty")
_DRAINING = Drop("draining")
_NOT_HANDSHAKE = Drop("not_handshake")
_MALFORMED = Drop("malformed")
_TOO_SMALL = Drop("too_small_to_answer")
_RECORD = Deliver("record")
_RETRANSMISSION = Deliver("retransmission")
_MALFORMED_HELLO = Deliver("malformed_hello")


def decide(
    datagram: bytes,
    address: Address,
    now: float,
    cookies: CookieSecrets,
    *,
    known_hello_id: bytes | None,
    admitting: bool,
) -> Decision:
    """What the endpoint does with *datagram* from *address*; see the module docstring.

    *now* is the wall-clock time (unix seconds) the cookies follow.
    *known_hello_id* is the :attr:`Admit.hello_id` of the peer the endpoint
    has at *address*, or None if it has none. *admitting* is false while the
    endpoint drains. Never raises on any bytes.
    """
    size = len(datagram)
    if size > MAX_DTLS_DATAGRAM:
        return _OVERSIZED
    if not size:
        return _EMPTY
    if known_hello_id is not None and not looks_like_client_hello(datagram):
        return _RECORD
    if not admitting:
        return _DRAINING
    if datagram[0] != HANDSHAKE:
        return _NOT_HANDSHAKE
    try:
        hello = parse_client_hello(datagram)
    except RecordParseError:
        # A known peer's OpenSSL may make sense of what our parser refuses
        # (it is that peer's handshake); a stranger gets nothing.
        return _MALFORMED if known_hello_id is None else _MALFORMED_HELLO
    cookie = hello.cookie
    if cookie:
        hello_id = cookie_input(hello)
        if hello_id == known_hello_id:
            # The ClientHello that admitted this peer, again: its server
            # flight was lost, and only that peer's OpenSSL can resend it.
            return _RETRANSMISSION
        if cookies.verify(cookie, address, hello, now):
            return Admit(hello_id, known_hello_id is not None)
    reply = build_hello_verify_request(hello, cookies.generate(address, hello, now))
    if len(reply) > size:
        return _TOO_SMALL  # never answer with more bytes than we got
    return Reply(reply, bool(cookie))
