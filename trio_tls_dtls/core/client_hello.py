"""The name of the key that sealed the session ticket a ClientHello offers (sans-IO).

A server that keeps its previous session-ticket key beside the current one
must make each connection from the context holding the key the client's
ticket was sealed with (:mod:`.ticket_keys`): OpenSSL decrypts tickets with
the keys of the context a connection was *made* from. OpenSSL starts every
ticket with the 16-byte name of its key, in the clear, and a ClientHello
carries the ticket in the clear: in TLS 1.2 and DTLS 1.2 as the
``session_ticket`` extension (RFC 5077), in TLS 1.3 as the first identity of
``pre_shared_key`` (RFC 8446 4.2.11). So the key name is a parse away.

The parse never raises and never decides anything about the handshake:
whatever it cannot read is "no ticket", and OpenSSL then sees the same bytes
and judges them itself. It is bounded: a TLS ClientHello is read from at
most :data:`MAX_PEEK` bytes of records, which is what a server buffers
before it gives up looking (a ClientHello that large is legal but rare).

Wire layout (big-endian; ``<n>`` is an n-byte length prefix)::

    TLS record   type(1)=22 version(2) length(2) fragment   (a message may span records)
    DTLS record  type(1)=22 version(2) epoch(2) sequence(6) length(2),
                 msg_type(1) length(3) message_seq(2) offset(3) frag_length(3)
    handshake    msg_type(1)=1 length(3) body               (TLS)
    ClientHello  version(2) random(32) session_id<1> [cookie<1>, DTLS only]
                 cipher_suites<2> compression_methods<1> extensions<2>
    extension    type(2) data<2>: 35 = the ticket itself;
                 41 = identities<2> of (identity<2> ticket_age(4)), then binders
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["KEY_NAME_SIZE", "MAX_PEEK", "TicketPeek", "dtls_ticket_key_name", "tls_ticket_key_name"]

KEY_NAME_SIZE = 16
"""OpenSSL's ticket key name: the first bytes of every ticket it seals."""
MAX_PEEK = 2**16
"""The most bytes of TLS records read while looking for the end of a ClientHello."""

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SESSION_TICKET = 35
_PRE_SHARED_KEY = 41
_TLS_RECORD_HEADER = 5
_DTLS_HEADERS = 13 + 12  # record header, then the handshake header
_MAX_RECORD = 2**14 + 2048


class TicketPeek(NamedTuple):
    """What a complete (or unreadable) ClientHello says about its ticket."""

    key_name: bytes | None
    """The key name of the ticket offered; None: no ticket, or not readable."""


_NO_TICKET = TicketPeek(None)


def tls_ticket_key_name(data: bytes) -> TicketPeek | None:
    """The ticket key name in the ClientHello that *data* (a TLS stream's start) begins with.

    None means the ClientHello is not complete yet: read more and call again
    with everything read so far. Past :data:`MAX_PEEK` bytes, or on anything
    that is not a ClientHello, the answer is ``TicketPeek(None)``.
    """
    message = bytearray()
    pos = 0
    while True:
        header_end = pos + _TLS_RECORD_HEADER
        if len(data) < header_end:
            return None if len(data) < MAX_PEEK else _NO_TICKET
        length = int.from_bytes(data[pos + 3 : header_end], "big")
        if data[pos] != _HANDSHAKE or not 0 < length <= _MAX_RECORD:
            return _NO_TICKET
        end = header_end + length
        if end > MAX_PEEK:
            return _NO_TICKET
        if len(data) < end:
            return None
        message += data[header_end:end]
        pos = end
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return _NO_TICKET
            need = 4 + int.from_bytes(message[1:4], "big")
            if len(message) >= need:
                return TicketPeek(_key_name(bytes(message[4:need]), dtls=False))


def dtls_ticket_key_name(datagram: bytes) -> bytes | None:
    """The ticket key name in the ClientHello that starts *datagram*, or None.

    The ClientHello must be whole in the first record, as the cookie gate
    already insists (:mod:`.dtls_records`).
    """
    if len(datagram) < _DTLS_HEADERS or datagram[0] != _HANDSHAKE or datagram[13] != _CLIENT_HELLO:
        return None
    record_end = 13 + int.from_bytes(datagram[11:13], "big")
    length = int.from_bytes(datagram[14:17], "big")
    whole = datagram[19:22] == b"\0\0\0" and datagram[22:25] == datagram[14:17]
    if not whole or _DTLS_HEADERS + length > min(record_end, len(datagram)):
        return None
    return _key_name(bytes(datagram[_DTLS_HEADERS : _DTLS_HEADERS + length]), dtls=True)


def _key_name(body: bytes, *, dtls: bool) -> bytes | None:
    ticket = _offered_ticket(body, dtls=dtls)
    if ticket is None or len(ticket) < KEY_NAME_SIZE:
        return None
    return ticket[:KEY_NAME_SIZE]


def _vector(body: bytes, pos: int, size: int) -> tuple[bytes, int] | None:
    """The *size*-byte length-prefixed vector at *pos*, and where it ends; None if cut short."""
    start = pos + size
    if start > len(body):
        return None
    stop = start + int.from_bytes(body[pos:start], "big")
    if stop > len(body):
        return None
    return body[start:stop], stop


def _offered_ticket(body: bytes, *, dtls: bool) -> bytes | None:
    pos = 34  # version, random
    for size in (1, 1, 2, 1) if dtls else (1, 2, 1):  # session_id, [cookie], suites, compression
        field = _vector(body, pos, size)
        if field is None:
            return None
        pos = field[1]
    extensions = _vector(body, pos, 2)
    if extensions is None:
        return None
    data, _ = extensions
    ticket: bytes | None = None
    pos = 0
    while pos + 4 <= len(data):
        kind = int.from_bytes(data[pos : pos + 2], "big")
        extension = _vector(data, pos + 2, 2)
        if extension is None:
            return None
        value, pos = extension
        if kind == _PRE_SHARED_KEY:
            identities = _vector(value, 0, 2)
            first = _vector(identities[0], 0, 2) if identities is not None else None
            # A TLS 1.3 resumption: the server decides on this one, not on ticket 35.
            return first[0] if first is not None else None
        if kind == _SESSION_TICKET and value:
            ticket = value
    return ticket
