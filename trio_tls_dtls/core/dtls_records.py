"""DTLS 1.2 record and ClientHello parsing, and the HelloVerifyRequest (sans-IO).

Just enough of RFC 6347 to run a stateless cookie exchange: find the
ClientHello in the first record of a datagram, read its cookie and the fields
a client must repeat in its second ClientHello (section 4.2.1), and build the
HelloVerifyRequest that answers it. Everything past that is OpenSSL's job.
The cookie gate (:mod:`.cookie_gate`) is the one user: it peeks with
:func:`looks_like_client_hello` at every datagram from a known peer (four
byte comparisons) and parses only what may be a ClientHello.

Any byte string given to :func:`parse_client_hello` either parses or raises
:class:`~trio_tls_dtls.core.errors.RecordParseError`; nothing else.

Wire layout (all integers big-endian)::

    record      type(1) version(2) epoch(2) sequence(6) length(2) fragment
    handshake   msg_type(1) length(3) message_seq(2) offset(3) frag_length(3) body
    ClientHello client_version(2) random(32) session_id<0..32>
                cookie<0..255> cipher_suites<2..2^16-2>
                compression_methods<1..255> [extensions<0..2^16-1>]
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import RecordParseError

__all__ = [
    "HANDSHAKE",
    "MAX_DTLS_DATAGRAM",
    "RECORD_HEADER_SIZE",
    "ClientHello",
    "build_hello_verify_request",
    "cookie_input",
    "looks_like_client_hello",
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
# No DTLS record carries more than 2^14 bytes of plaintext plus 2048 of
# expansion, plus its header: a datagram larger than that is not DTLS.
MAX_DTLS_DATAGRAM = 2**14 + 2048 + RECORD_HEADER_SIZE


class ClientHello(NamedTuple):
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


# type(1) version(2) epoch(2) sequence(6) length(2), then the handshake
# header: msg_type(1) length(3) message_seq(2) offset(3) fragment_length(3).
_HEADERS = struct.Struct("!BHH6sHB3sH3s3s")
_HEADERS_SIZE = RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE


def looks_like_client_hello(datagram: bytes) -> bool:
    """Whether *datagram* starts like a ClientHello: a peek, not a parse.

    A handshake record in epoch 0 whose first message is a client_hello.
    Cheap enough to run on every datagram from a known peer, which is what
    it is for: everything else a peer sends (application data, alerts, its
    later handshake messages) fails it within a few byte comparisons. A True
    here is only a hint; :func:`parse_client_hello` decides.
    """
    return (
        len(datagram) > _HEADERS_SIZE
        and datagram[0] == HANDSHAKE
        and datagram[3] == 0
        and datagram[4] == 0
        and datagram[13] == CLIENT_HELLO
    )


def _truncated(what: str, need: int, left: int) -> RecordParseError:
    return RecordParseError(f"truncated {what}: need {need} bytes, {max(left, 0)} left")


def parse_client_hello(datagram: bytes) -> ClientHello:
    """The ClientHello in the first record of *datagram*, or RecordParseError.

    Only an unfragmented ClientHello in an epoch-0 handshake record counts:
    a client's first flight always fits in one datagram at any sane MTU, and
    OpenSSL's own listener asks the same.
    """
    data = bytes(datagram)
    size = len(data)
    if size < _HEADERS_SIZE:
        if size and data[0] != HANDSHAKE:
            raise RecordParseError("not a handshake record")
        raise _truncated("record and handshake headers", _HEADERS_SIZE, size)
    (kind, version, epoch, sequence, record_length, msg_type, length, message_seq, offset,
     fragment_length) = _HEADERS.unpack_from(data)  # fmt: skip
    if kind != HANDSHAKE:
        raise RecordParseError("not a handshake record")
    if version >> 8 != _DTLS_MAJOR:
        raise RecordParseError(f"not a DTLS record (version 0x{version:04x})")
    if epoch != 0:
        raise RecordParseError("a ClientHello is sent in epoch 0")
    record_end = RECORD_HEADER_SIZE + record_length
    if record_end > size:
        raise RecordParseError(
            f"record length {record_length} exceeds the {size - RECORD_HEADER_SIZE} bytes received"
        )
    if record_end < _HEADERS_SIZE:
        raise _truncated("handshake header", HANDSHAKE_HEADER_SIZE, record_length)
    if msg_type != CLIENT_HELLO:
        raise RecordParseError("not a ClientHello")
    if offset != b"\0\0\0" or fragment_length != length:
        raise RecordParseError("fragmented ClientHello")
    end = _HEADERS_SIZE + int.from_bytes(length, "big")
    if end > record_end:
        raise RecordParseError("ClientHello longer than its record")

    pos = _HEADERS_SIZE + 34
    if pos > end:
        raise _truncated("client_version and random", 34, end - _HEADERS_SIZE)
    client_version = (data[_HEADERS_SIZE] << 8) | data[_HEADERS_SIZE + 1]
    if client_version >> 8 != _DTLS_MAJOR:
        raise RecordParseError(f"not a DTLS ClientHello (version 0x{client_version:04x})")
    fields: list[bytes] = []
    for what, length_size in _VECTORS:
        start = pos + length_size
        if start > end:
            raise _truncated(f"{what} length", length_size, end - pos)
        stop = start + int.from_bytes(data[pos:start], "big")
        if stop > end:
            raise _truncated(what, stop - start, end - start)
        fields.append(data[start:stop])
        pos = stop
    session_id, cookie, cipher_suites, compression_methods = fields
    if len(session_id) > MAX_SESSION_ID:
        raise RecordParseError(f"session_id of {len(session_id)} bytes (at most 32)")
    if not cipher_suites or len(cipher_suites) % 2:
        raise RecordParseError(f"cipher_suites of {len(cipher_suites)} bytes")
    if not compression_methods:
        raise RecordParseError("no compression_methods")
    # Extensions, if any: OpenSSL parses them; we check they fill the rest exactly.
    if pos != end and (
        pos + 2 > end or pos + 2 + int.from_bytes(data[pos : pos + 2], "big") != end
    ):
        raise RecordParseError("extensions do not fill the rest of the ClientHello")
    return ClientHello(
        int.from_bytes(sequence, "big"),
        message_seq,
        client_version,
        data[_HEADERS_SIZE + 2 : _HEADERS_SIZE + 34],
        session_id,
        cookie,
        cipher_suites,
        compression_methods,
    )


_VECTORS = (("session_id", 1), ("cookie", 1), ("cipher_suites", 2), ("compression_methods", 1))


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
