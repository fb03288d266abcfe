"""The PROXY protocol (HAProxy's spec, versions 1 and 2), sans-IO.

A layer-4 load balancer that terminates TCP but not TLS opens its own
connection to us, so the socket's peer is the balancer. With the PROXY
protocol it first sends one small header naming the real client, then relays
the client's bytes (here: the TLS ClientHello) unchanged. This module only
parses that header: bytes in, a :class:`ProxyHeader` and the bytes that
followed it out. It never reads a socket and never waits; the server reads,
feeds :class:`ProxyHeaderParser` and applies its own deadline, so a peer that
sends half a header costs a timeout, never a hang.

Two formats, told apart by their first byte:

* v1, one text line of at most 107 bytes:
  ``PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\\r\\n`` (``TCP6`` for IPv6,
  ``UNKNOWN`` when the balancer does not know; the rest of that line is
  ignored).
* v2, binary: a 12-byte signature, version and command, address family and
  transport, a 16-bit length, the addresses, then optional TLVs (checked for
  framing and handed back raw in :attr:`ProxyHeader.tlvs`;
  :mod:`.proxy_tlvs` reads the TLS ones). ``LOCAL`` (the balancer's own
  health check) and the ``UNSPEC`` family carry no client address.

A TCP listener (the TLS server) accepts the TCP families only. A UDP
receiver, such as a backend that gets our forwarded DTLS datagrams with a
header on each (:mod:`.proxy_header_builder`), asks for the UDP ones with
``ProxyHeaderParser(datagram=True)``.

When there is no client address (:attr:`ProxyHeader.source` is ``None``) the
caller keeps the socket's own peer address, as the spec requires.

Everything not in the spec is refused with a :class:`ProxyHeaderError` that
says what was wrong, and as early as possible: a TLS ClientHello sent without
a header fails at its first byte, not at a timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from .errors import TLSDError
from .peer_info import Address

__all__ = [
    "MAX_HEADER_LENGTH",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyTLV",
    "parse_proxy_header",
    "split_tlvs",
]

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""The longest v1 line the spec allows, CRLF included."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/protocol, length
_V2_FIXED_STRUCT = struct.Struct("!BBH")

MAX_HEADER_LENGTH = 4096
"""Default cap on a whole v2 header (TLVs included).

The spec allows 16 + 65535 bytes; balancers send tens to a few hundred. A
cap keeps what one unauthenticated connection can make us buffer small.
"""

_V2_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
# (family, protocol) byte -> address block size, for the IP families.
_V2_UNSPEC = 0x00
_V2_STREAM_SIZES = {0x11: 12, 0x21: 36}  # TCP over IPv4, IPv6
_V2_DATAGRAM_SIZES = {0x12: 12, 0x22: 36}  # UDP over IPv4, IPv6
_V2_FAMILY_NAMES = {
    0x11: "TCP over IPv4",
    0x21: "TCP over IPv6",
    0x12: "UDP over IPv4",
    0x22: "UDP over IPv6",
    0x31: "a UNIX stream socket",
    0x32: "a UNIX datagram socket",
}

ProxyTLV = tuple[int, bytes]
"""One v2 TLV: its type byte and its value."""


class ProxyHeaderError(TLSDError, ValueError):
    """Bytes that are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed PROXY protocol header.

    ``source`` is the real client's (host, port) and ``destination`` the
    address it connected to at the balancer. Both are ``None`` when the
    header carries no addresses (v1 ``UNKNOWN``, v2 ``LOCAL`` or ``UNSPEC``):
    the connection is then the balancer's own, and the socket's peer address
    is the one to use. ``length`` is how many bytes the header took.
    ``tlvs`` are a v2 header's TLVs after its addresses, in order, raw (see
    :mod:`.proxy_tlvs`); ``datagram`` says it describes UDP, not TCP.
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    source: Address | None
    destination: Address | None
    length: int
    tlvs: tuple[ProxyTLV, ...] = ()
    datagram: bool = False


class ProxyHeaderParser:
    """Incremental parser: :meth:`feed` bytes until it returns the header.

    Each call either raises :class:`ProxyHeaderError` (the bytes so far can
    never become a valid header), returns ``None`` (valid so far, but
    incomplete), or returns ``(header, leftover)`` where *leftover* is what
    followed the header in the bytes fed (the start of the TLS stream).
    After a result or an error, the parser must not be fed again.

    With *datagram* the header must describe UDP (the v2 UDP families; v1
    has none): for a receiver of datagrams, each carrying its own header.
    Without it, TCP (a stream listener).
    """

    def __init__(self, *, max_length: int = MAX_HEADER_LENGTH, datagram: bool = False) -> None:
        if max_length < V1_MAX_LENGTH:
            raise ValueError(f"max_length must be at least {V1_MAX_LENGTH}, not {max_length}")
        self.max_length = max_length
        self.datagram = datagram
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, bytes] | None:
        """Add *data*; the header and the leftover bytes once complete, else None."""
        if self._done:
            raise RuntimeError("this ProxyHeaderParser has already finished")
        self._buffer += data
        try:
            result = self._parse()
        except ProxyHeaderError:
            self._done = True
            raise
        if result is not None:
            self._done = True
        return result

    def _parse(self) -> tuple[ProxyHeader, bytes] | None:
        buffer = bytes(self._buffer)
        if not buffer:
            return None
        if buffer[0] == V1_PREFIX[0]:
            if self.datagram:
                raise ProxyHeaderError("a PROXY v1 header cannot describe UDP: v2 is needed")
            return _parse_v1(buffer)
        if buffer[0] == V2_SIGNATURE[0]:
            return _parse_v2(buffer, self.max_length, self.datagram)
        raise ProxyHeaderError(
            f"not a PROXY protocol header: it starts with byte 0x{buffer[0]:02x}"
            + (" (a TLS record: the sender does not speak PROXY)" if buffer[0] == 0x16 else "")
        )


def parse_proxy_header(
    data: bytes | bytearray | memoryview,
    *,
    max_length: int = MAX_HEADER_LENGTH,
    datagram: bool = False,
) -> tuple[ProxyHeader, bytes] | None:
    """One-shot :class:`ProxyHeaderParser`: the header and leftover, or None if incomplete."""
    return ProxyHeaderParser(max_length=max_length, datagram=datagram).feed(data)


# -- version 1 ----------------------------------------------------------------


def _parse_v1(buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
    head = buffer[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyHeaderError(f"not a PROXY v1 header: it starts with {head!r}")
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        newline = buffer.find(b"\n", 0, V1_MAX_LENGTH)
        if newline >= 0:
            raise ProxyHeaderError("PROXY v1 line ends with a bare LF, not CRLF")
        if len(buffer) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(
                f"PROXY v1 line has no CRLF within {V1_MAX_LENGTH} bytes (the spec's maximum)"
            )
        return None
    line = buffer[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII text") from None
    source, destination = _v1_addresses(text)
    header = ProxyHeader(1, "PROXY", source, destination, end + 2)
    return header, buffer[end + 2 :]


def _v1_addresses(text: str) -> tuple[Address | None, Address | None]:
    fields = text.split(" ")
    if len(fields) < 2:
        raise ProxyHeaderError(f"PROXY v1 line has no protocol: {text!r}")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        return None, None  # the spec says: ignore the rest of the line
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not {protocol!r}")
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"PROXY v1 {protocol} line needs 4 fields after the protocol, "
            f"separated by single spaces: {text!r}"
        )
    version = 4 if protocol == "TCP4" else 6
    src_host = _v1_host(fields[2], version, "source")
    dst_host = _v1_host(fields[3], version, "destination")
    src_port = _v1_port(fields[4], "source")
    dst_port = _v1_port(fields[5], "destination")
    return (src_host, src_port), (dst_host, dst_port)


def _v1_host(text: str, version: int, which: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 {which} address {text!r} is not an IP address") from None
    if address.version != version or "%" in text:
        raise ProxyHeaderError(f"PROXY v1 {which} address {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str, which: str) -> int:
    # Plain decimal, no sign, no leading zero (int() would accept "+1", " 1", "٣").
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 5
        or (len(text) > 1 and text[0] == "0")
    ):
        raise ProxyHeaderError(f"PROXY v1 {which} port {text!r} is not a decimal number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 {which} port {port} is above 65535")
    return port


# -- version 2 ----------------------------------------------------------------


def _parse_v2(buffer: bytes, max_length: int, datagram: bool) -> tuple[ProxyHeader, bytes] | None:
    head = buffer[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyHeaderError("not a PROXY v2 header: wrong signature")
    if len(buffer) < _V2_FIXED:
        return None
    version_command, family_protocol, length = _V2_FIXED_STRUCT.unpack_from(buffer, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header has version {version_command >> 4}, not 2")
    command = _V2_COMMANDS.get(version_command & 0x0F)
    if command is None:
        raise ProxyHeaderError(
            f"PROXY v2 command 0x{version_command & 0x0F:x} is neither LOCAL (0) nor PROXY (1)"
        )
    total = _V2_FIXED + length
    if total > max_length:
        raise ProxyHeaderError(
            f"PROXY v2 header of {total} bytes is over the limit of {max_length} bytes"
        )
    if len(buffer) < total:
        return None
    block = buffer[_V2_FIXED:total]
    leftover = buffer[total:]
    if command == "LOCAL":
        # The balancer's own connection (a health check): the spec says to
        # discard the whole block, family included, and keep the real peer.
        return ProxyHeader(2, "LOCAL", None, None, total, datagram=datagram), leftover
    source, destination, tlvs = _v2_addresses(family_protocol, block, datagram)
    header = ProxyHeader(2, "PROXY", source, destination, total, tlvs, datagram)
    return header, leftover


def _v2_addresses(
    family_protocol: int, block: bytes, datagram: bool
) -> tuple[Address | None, Address | None, tuple[ProxyTLV, ...]]:
    if family_protocol == _V2_UNSPEC:
        return None, None, ()  # no addresses: keep the socket's, ignore the block
    sizes = _V2_DATAGRAM_SIZES if datagram else _V2_STREAM_SIZES
    size = sizes.get(family_protocol)
    if size is None:
        name = _V2_FAMILY_NAMES.get(family_protocol)
        if name is None:
            raise ProxyHeaderError(
                f"PROXY v2 family/protocol byte 0x{family_protocol:02x} is not one the spec defines"
            )
        expected = (
            "UDP over IP: this receives datagrams"
            if datagram
            else "TCP over IP: this is a TCP listener"
        )
        raise ProxyHeaderError(f"PROXY v2 header is for {name}, not {expected}")
    if len(block) < size:
        raise ProxyHeaderError(
            f"PROXY v2 address block is {len(block)} bytes, "
            f"too short for {'IPv4' if size == 12 else 'IPv6'} ({size})"
        )
    tlvs = split_tlvs(block[size:])
    half = (size - 4) // 2
    src_ip, dst_ip = block[:half], block[half : 2 * half]
    src_port, dst_port = struct.unpack_from("!HH", block, 2 * half)
    return (
        (str(ipaddress.ip_address(src_ip)), src_port),
        (str(ipaddress.ip_address(dst_ip)), dst_port),
        tlvs,
    )


def split_tlvs(data: bytes, where: str = "PROXY v2 TLV") -> tuple[ProxyTLV, ...]:
    """The ``(type, value)`` pairs framed in *data*; ProxyHeaderError if the framing is broken.

    A TLV is one type byte, a 16-bit big-endian length, then that many
    bytes. The SSL TLV nests more of them (its sub-TLVs), framed the same
    way: *where* names which list is broken.
    """
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError(
                f"{where} at offset {offset} is truncated: {len(data) - offset} of 3 bytes"
            )
        kind, size = data[offset], int.from_bytes(data[offset + 1 : offset + 3], "big")
        start, offset = offset + 3, offset + 3 + size
        if offset > len(data):
            raise ProxyHeaderError(
                f"{where} of type 0x{kind:02x} claims {size} bytes, more than the header holds"
            )
        tlvs.append((kind, bytes(data[start:offset])))
    return tuple(tlvs)
