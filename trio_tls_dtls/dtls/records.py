"""DTLS 1.2 record and ClientHello parsing, and the HelloVerifyRequest (sans-IO).

Just enough of RFC 6347 to run a stateless cookie exchange: find the
ClientHello in the first record of a datagram, read its cookie and the fields
a client must repeat in its second ClientHello (section 4.2.1), and build the
HelloVerifyRequest that answers it. Everything past that is OpenSSL's job.

Any byte string given to :func:`parse_client_hello` either parses or raises
:class:`~trio_tls_dtls.errors.RecordParseError`; nothing else.

Wire layout (all integers big-endian)::

    record      type(1) version(2) epoch(2) sequence(6) length(2) fragment
    handshake   msg_type(1) length(3) message_seq(2) offset(3) frag_length(3) body
    ClientHello client_version(2) random(32) session_id<0..32>
                cookie<0..255> cipher_suites<2..2^16-2>
                compression_methods<1..255> [extensions<0..2^16-1>]
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecordParseError

__all__ = [
    "HANDSHAKE",
    "RECORD_HEADER_SIZE",
    "ClientHello",
    "build_hello_verify_request",
    "cookie_input",
    "parse_client_hello",
]

HANDSHAKE = 22
CLIENT_HELLO = 1
HELLO_VERIFY_REQUEST = 3
RECORD_HEADER_SIZE = 13
HANDSHAKE_HEADER_SIZE = 12
# RFC 6347 4.2.1: the HelloVerifyRequest carries DTLS 1.0 whatever is
# negotiated later, and cookies are at most 255 bytes (RFC 6347 erratum: 2^8-1).
HVR_VERSION = 0xFEFF
MAX_COOKIE = 255
MAX_SESSION_ID = 32
_DTLS_MAJOR = 0xFE


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The parts of a ClientHello the cookie exchange needs."""

    record_sequence: int
    """The 48-bit record sequence number (echoed in the HelloVerifyRequest)."""
    message_seq: int
    """The handshake message sequence (echoed in the HelloVerifyRequest)."""
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: bytes
    compression_methods: bytes


class _Reader:
    """Bounds-checked reads from a bytes object; every overrun is a RecordParseError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def take(self, size: int, what: str) -> bytes:
        start = self.pos
        stop = start + size
        if stop > self.end:
            raise RecordParseError(f"truncated {what}: need {size} bytes, {self.end - start} left")
        self.pos = stop
        return self.data[start:stop]

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> bytes:
        return self.take(self.uint(length_size, f"{what} length"), what)


def parse_client_hello(datagram: bytes) -> ClientHello:
    """The ClientHello in the first record of *datagram*, or RecordParseError.

    Only an unfragmented ClientHello in an epoch-0 handshake record counts:
    a client's first flight always fits in one datagram at any sane MTU, and
    OpenSSL's own listener asks the same.
    """
    data = bytes(datagram)
    header = _Reader(data, 0, len(data))
    if header.uint(1, "record type") != HANDSHAKE:
        raise RecordParseError("not a handshake record")
    version = header.uint(2, "record version")
    if version >> 8 != _DTLS_MAJOR:
        raise RecordParseError(f"not a DTLS record (version 0x{version:04x})")
    if header.uint(2, "epoch") != 0:
        raise RecordParseError("a ClientHello is sent in epoch 0")
    record_sequence = header.uint(6, "record sequence")
    record_length = header.uint(2, "record length")
    fragment = _Reader(data, header.pos, header.pos + record_length)
    if fragment.end > len(data):
        raise RecordParseError(
            f"record length {record_length} exceeds the {len(data) - header.pos} bytes received"
        )

    if fragment.uint(1, "handshake type") != CLIENT_HELLO:
        raise RecordParseError("not a ClientHello")
    length = fragment.uint(3, "handshake length")
    message_seq = fragment.uint(2, "message sequence")
    offset = fragment.uint(3, "fragment offset")
    fragment_length = fragment.uint(3, "fragment length")
    if offset != 0 or fragment_length != length:
        raise RecordParseError("fragmented ClientHello")
    body = _Reader(data, fragment.pos, fragment.pos + length)
    if body.end > fragment.end:
        raise RecordParseError("ClientHello longer than its record")

    client_version = body.uint(2, "client_version")
    if client_version >> 8 != _DTLS_MAJOR:
        raise RecordParseError(f"not a DTLS ClientHello (version 0x{client_version:04x})")
    random = body.take(32, "random")
    session_id = body.vector(1, "session_id")
    if len(session_id) > MAX_SESSION_ID:
        raise RecordParseError(f"session_id of {len(session_id)} bytes (at most 32)")
    cookie = body.vector(1, "cookie")
    cipher_suites = body.vector(2, "cipher_suites")
    if not cipher_suites or len(cipher_suites) % 2:
        raise RecordParseError(f"cipher_suites of {len(cipher_suites)} bytes")
    compression_methods = body.vector(1, "compression_methods")
    if not compression_methods:
        raise RecordParseError("no compression_methods")
    if body.pos != body.end:
        body.vector(2, "extensions")  # OpenSSL parses them; we check they fit
        if body.pos != body.end:
            raise RecordParseError(f"{body.end - body.pos} stray bytes after the extensions")
    return ClientHello(
        record_sequence=record_sequence,
        message_seq=message_seq,
        client_version=client_version,
        random=random,
        session_id=session_id,
        cookie=cookie,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
    )


def cookie_input(hello: ClientHello) -> bytes:
    """The ClientHello fields a cookie covers: those RFC 6347 4.2.1 says a client repeats.

    Each field is length-prefixed so no two different hellos give the same bytes.
    """
    parts = (hello.random, hello.session_id, hello.cipher_suites, hello.compression_methods)
    out = bytearray(hello.client_version.to_bytes(2, "big"))
    for part in parts:
        out += len(part).to_bytes(2, "big")
        out += part
    return bytes(out)


def build_hello_verify_request(hello: ClientHello, cookie: bytes) -> bytes:
    """The HelloVerifyRequest datagram answering *hello* with *cookie*.

    It reuses the ClientHello's record sequence and message_seq, as RFC 6347
    4.2.1 asks, so the server keeps no sequence state of its own.
    """
    if not 0 < len(cookie) <= MAX_COOKIE:
        raise ValueError(f"a cookie is 1-{MAX_COOKIE} bytes, not {len(cookie)}")
    body = HVR_VERSION.to_bytes(2, "big") + bytes([len(cookie)]) + cookie
    handshake = (
        bytes([HELLO_VERIFY_REQUEST])
        + len(body).to_bytes(3, "big")
        + hello.message_seq.to_bytes(2, "big")
        + (0).to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )
    record = (
        bytes([HANDSHAKE])
        + HVR_VERSION.to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + hello.record_sequence.to_bytes(6, "big")
        + len(handshake).to_bytes(2, "big")
    )
    return record + handshake
