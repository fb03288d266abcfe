"""PROXY protocol headers built by hand for the tests (v1 text, v2 binary, TLVs)."""

from __future__ import annotations

import socket
import struct

from trio_tls_dtls.core.proxy_protocol import V2_SIGNATURE

CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00"  # what a TLS stream starts with


def v1(text: str) -> bytes:
    return f"PROXY {text}\r\n".encode()


def v2(
    family: int,
    addresses: bytes = b"",
    *,
    command: int = 0x1,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    body = addresses + tlvs
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body
    )


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    return (
        pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


TLVS = tlv(0x01, b"h2") + tlv(0x05, b"unique-id") + tlv(0x04, b"")  # ALPN, UNIQUE_ID, NOOP
