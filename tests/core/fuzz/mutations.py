"""Shared pieces of the fuzz tests: the defined errors, mutators, and engine probes.

The property every fuzz test checks is the same: whatever bytes arrive, an
engine call either returns normally or raises one of :data:`DEFINED_ERRORS`,
and what the engine writes back stays bounded. Anything else escaping (an
``OpenSSL.SSL.Error``, ``ValueError``, ``IndexError``, a cffi error) is a bug
in the engine, which must translate it.

How many examples each test runs is set by the Hypothesis profile, chosen in
tests/conftest.py from ``HYPOTHESIS_PROFILE``: ``ci`` (the default, a few
seconds in all) or ``deep`` (``nox -s fuzz``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

from hypothesis import strategies as st

from trio_tls_dtls.core.engine import DTLSEngine, TLSEngine
from trio_tls_dtls.core.errors import HandshakeError, TLSError

T = TypeVar("T")

#: The only exceptions an engine may raise on hostile input. HandshakeError is
#: a TLSError; both are listed because both are part of the contract.
DEFINED_ERRORS: tuple[type[Exception], ...] = (HandshakeError, TLSError)

#: An engine answering any single input writes at most this much: a full
#: server flight (certificate chain included) is ~2-4 KiB, an alert 7 bytes.
OUTPUT_LIMIT = 64 * 1024

TLS_HEADER = 5  # type(1) version(2) length(2)
DTLS_HEADER = 13  # type(1) version(2) epoch(2) sequence(6) length(2)

# (offset, size) of every field of a DTLS record header, then of the
# handshake header that follows it in a plaintext (epoch 0) handshake record.
DTLS_RECORD_FIELDS = {
    "type": (0, 1),
    "version": (1, 2),
    "epoch": (3, 2),
    "sequence": (5, 6),
    "length": (11, 2),
}
DTLS_HANDSHAKE_FIELDS = {
    "msg_type": (13, 1),
    "msg_length": (14, 3),
    "message_seq": (17, 2),
    "fragment_offset": (19, 3),
    "fragment_length": (22, 3),
}


def _set_field(data: bytearray, offset: int, size: int, value: int) -> None:
    if offset + size <= len(data):
        data[offset : offset + size] = value.to_bytes(size, "big")


def record_spans(data: bytes, *, header: int, length_at: int) -> list[tuple[int, int]]:
    """(start, end) of each whole record in *data* (TLS or DTLS framing)."""
    spans = []
    pos = 0
    while pos + header <= len(data):
        end = pos + header + int.from_bytes(data[pos + length_at : pos + length_at + 2], "big")
        if end > len(data):
            break
        spans.append((pos, end))
        pos = end
    return spans


_ANY = st.integers(0, (1 << 16) - 1)


Mutation = tuple[str, int, int, int, bytes, int]
"""One mutation: its kind, three positions or sizes, bytes to insert, a field value."""

MUTATION: st.SearchStrategy[Mutation] = st.tuples(
    st.sampled_from(
        ("flip", "set", "truncate", "insert", "delete", "duplicate", "splice", "record_field")
    ),
    _ANY,
    _ANY,
    _ANY,
    st.binary(min_size=1, max_size=64),
    st.integers(0, 6) | st.integers(0, (1 << 48) - 1),
)

_TLS_FIELDS = {"type": (0, 1), "version": (1, 2), "length": (3, 2)}
_DTLS_FIELDS = {**DTLS_RECORD_FIELDS, **DTLS_HANDSHAKE_FIELDS}


def _field_value(choice: int, old: int, size: int) -> int:
    """Small choices pick a boundary (0, 1, max, old±1, half); larger ones are the value."""
    top = (1 << (8 * size)) - 1
    special = [0, 1, top, min(old + 1, top), max(old - 1, 0), top // 2]
    return special[choice] if choice < len(special) else choice & top


def apply_mutation(
    data: bytearray, mutation: Mutation, *, dtls: bool, splice_with: tuple[bytes, ...]
) -> bytearray:
    """Apply one mutation (positions are taken modulo the current size)."""
    kind, a, b, c, blob, value = mutation
    size = len(data)
    if kind == "flip" and size:
        data[a % size] ^= 1 << (b % 8)
    elif kind == "set" and size:
        data[a % size] = b % 256
    elif kind == "truncate":
        del data[a % (size + 1) :]
    elif kind == "insert":
        i = a % (size + 1)
        data[i:i] = blob
    elif kind == "delete" and size:
        i = a % size
        del data[i : i + 1 + b % 64]
    elif kind == "duplicate" and size:
        i = a % size
        data[c % (size + 1) : c % (size + 1)] = data[i : i + 1 + b % 256]
    elif kind == "splice" and splice_with:
        other = splice_with[c % len(splice_with)]
        data = data[: a % (size + 1)] + other[b % (len(other) + 1) :]
    elif kind == "record_field":
        header, length_at = (DTLS_HEADER, 11) if dtls else (TLS_HEADER, 3)
        spans = record_spans(bytes(data), header=header, length_at=length_at)
        fields = _DTLS_FIELDS if dtls else _TLS_FIELDS
        names = sorted(fields)
        if spans:
            start, _ = spans[a % len(spans)]
            offset, width = fields[names[b % len(names)]]
            offset += start
            old = int.from_bytes(data[offset : offset + width], "big")
            _set_field(data, offset, width, _field_value(value, old, width))
    return data


@st.composite
def mutated(
    draw: st.DrawFn,
    base: bytes,
    *,
    dtls: bool = False,
    splice_with: tuple[bytes, ...] = (),
    must_differ: bool = False,
) -> bytes:
    """*base* after 1-4 mutations: bit flips, byte sets, truncation, insertion,
    deletion, duplication, splicing with other real messages, and changes to
    the record (and, for DTLS, handshake fragment) header fields.

    The draws do not depend on *base*, whose length varies between runs of a
    real handshake (random values, DER signatures): Hypothesis replays them.
    """
    plan = draw(MUTATION_PLAN)
    return mutate(base, plan, dtls=dtls, splice_with=splice_with, must_differ=must_differ)


MUTATION_PLAN = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(
    base: bytes,
    plan: list[Mutation],
    *,
    dtls: bool = False,
    splice_with: tuple[bytes, ...] = (),
    must_differ: bool = False,
) -> bytes:
    """*base* after the mutations in *plan* (see :func:`mutated`)."""
    data = bytearray(base)
    for mutation in plan:
        data = apply_mutation(data, mutation, dtls=dtls, splice_with=splice_with)
    result = bytes(data)
    if must_differ and result == base:
        result = base[:-1] if base else b"\0"
    return result


def call(fn: Callable[[], T]) -> T | Exception:
    """Run one engine call: its result, or the defined error it raised.

    Any other exception propagates and fails the test, with Hypothesis
    reporting the input that caused it.
    """
    try:
        return fn()
    except DEFINED_ERRORS as exc:
        return exc


def drain(engine: TLSEngine, fed: int) -> bytes:
    """Read plaintext until the engine has none (or fails); return what it gave.

    Every non-empty read consumes at least one record of what was fed, so
    more reads than that would mean the engine spins: a hang.
    """
    out = bytearray()
    for _ in range(fed // TLS_HEADER + 2):
        got = call(lambda: engine.receive_many(65536))
        if not isinstance(got, bytes) or not got:
            return bytes(out)
        out += got
    raise AssertionError(f"engine kept returning plaintext from {fed} bytes of input")


def collect_output(engine: TLSEngine) -> bytes:
    """What the engine wants to send now, which must stay bounded."""
    out = call(engine.bytes_to_send)
    assert isinstance(out, bytes), f"bytes_to_send raised {out!r}"
    assert len(out) <= OUTPUT_LIMIT, f"{len(out)} bytes of output from one input"
    return out


def probe_tls(engine: TLSEngine, chunks: list[bytes]) -> bytes:
    """Feed *chunks* (one TCP segment each) and exercise every entry point.

    Returns the plaintext delivered before the engine gave up or ran dry.
    """
    plaintext = bytearray()
    fed = 0
    for chunk in chunks:
        call(lambda chunk=chunk: engine.receive_bytes(chunk))
        fed += len(chunk)
        if engine.handshake_done:
            plaintext += drain(engine, fed)
        else:
            call(lambda: (engine.sent_first_flight, engine.verifies_peer))
            done = call(engine.do_handshake)
            if done is True:
                assert engine.handshake_done
                engine.peer_info(("192.0.2.1", 1))
                plaintext += drain(engine, fed)
        collect_output(engine)
    # The transport ends: whatever is half-read now is a truncation.
    call(engine.receive_eof)
    if engine.handshake_done:
        plaintext += drain(engine, fed)
    else:
        call(engine.do_handshake)
    collect_output(engine)
    call(engine.close)
    collect_output(engine)
    return bytes(plaintext)


def probe_dtls(
    engine: DTLSEngine,
    datagrams: list[bytes],
    *,
    close: bool = True,
    outbox: list[bytes] | None = None,
) -> list[bytes]:
    """Feed *datagrams* one at a time, as the drivers do; the messages delivered.

    With *close*, finish by queueing close_notify, as a driver does at the
    end. What the engine writes goes to *outbox* if given, else is dropped.
    """
    if outbox is None:
        outbox = []
    messages: list[bytes] = []
    for datagram in datagrams:
        call(lambda datagram=datagram: engine.receive_datagram(datagram))
        if engine.handshake_done:
            got = call(engine.receive_messages)
            if isinstance(got, list):
                messages += got
        else:
            call(lambda: (engine.sent_first_flight, engine.verifies_peer))
            if call(engine.do_handshake) is True:
                engine.peer_info(("192.0.2.1", 1), transport="dtls")
        outbox += check_datagrams(engine)
        call(engine.timeout)
        call(engine.handle_timeout)
        outbox += check_datagrams(engine)
    if close:
        call(engine.close)
        outbox += check_datagrams(engine)
    return messages


def check_datagrams(engine: DTLSEngine) -> list[bytes]:
    """The engine's outgoing datagrams: bounded in total, each within the MTU."""
    out = call(engine.datagrams_to_send)
    assert isinstance(out, list), f"datagrams_to_send raised {out!r}"
    assert sum(map(len, out)) <= OUTPUT_LIMIT
    for datagram in out:
        assert len(datagram) <= engine.mtu, f"{len(datagram)}-byte datagram, MTU {engine.mtu}"
    return out


CUTS = st.lists(st.integers(1, 1 << 16), max_size=4)
"""Where a test cuts its input into segments (see :func:`segments`)."""


def segments(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* cut into TCP-like segments at *cuts* (taken modulo its length)."""
    if len(data) < 2:
        return [data]
    points = sorted({cut % (len(data) - 1) + 1 for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
