"""Building PROXY protocol headers (HAProxy's spec, v1 and v2), sans-IO.

The other direction from :mod:`.proxy_protocol`: when we forward a client's
plaintext to a backend, the backend's peer is us. A header sent first (TCP)
or in front of every datagram (UDP) tells it who the client really was:

* :func:`build_v1`: one text line, ``PROXY TCP4 SRC DST SPORT DPORT\\r\\n``
  (``TCP6`` for IPv6, ``PROXY UNKNOWN\\r\\n`` when an address is unknown).
  TCP only: v1 has no way to say UDP.
* :func:`build_v2`: the 12-byte signature, ``0x21`` (version 2, PROXY), the
  family and transport (``0x11``/``0x21`` TCP over IPv4/IPv6, ``0x12``/
  ``0x22`` UDP), the length of what follows, the addresses in network
  order (source address, destination address, source port, destination
  port), then TLVs (:mod:`.proxy_tlvs`: the TLS facts). With an unknown
  address the family is ``UNSPEC`` (0x00) and only the TLVs follow.

Both ends of a header must be one family. A dual-stack socket sees an IPv4
client as ``::ffff:a.b.c.d``: an IPv4-mapped address is written as the IPv4
address it is, and when the two ends are still of different families (an
IPv4 client of a ``::`` wildcard socket) the IPv4 one is written
IPv4-mapped, as that socket saw it.

:func:`header_for_peer` is what the forwarding handlers call: one header per
TLS connection or DTLS peer, built once (a UDP backend gets the same bytes
in front of each datagram).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Literal

from .peer_info import Address, PeerInfo
from .proxy_protocol import V1_MAX_LENGTH, V2_SIGNATURE, ProxyTLV
from .proxy_tlvs import client_tlvs, encode_tlvs

__all__ = ["ProxyVersion", "build_v1", "build_v2", "header_for_peer"]

ProxyVersion = Literal["v1", "v2"]

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_V2_PROXY = 0x21  # version 2 << 4 | PROXY
_V2_UNSPEC = 0x00
_V2_FAMILY = {(4, False): 0x11, (6, False): 0x21, (4, True): 0x12, (6, True): 0x22}


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 header line for a TCP connection from *source* to *destination*."""
    pair = _same_family(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = pair
    protocol = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {protocol} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")
    assert len(line) <= V1_MAX_LENGTH  # the longest IPv6 text and ports still fit
    return line


def build_v2(
    source: Address | None,
    destination: Address | None,
    *,
    datagram: bool = False,
    tlvs: Iterable[ProxyTLV] = (),
) -> bytes:
    """A v2 PROXY header for TCP (or UDP with *datagram*) from *source* to *destination*.

    ValueError if the TLVs make it longer than the 16-bit length field allows.
    """
    pair = _same_family(source, destination)
    if pair is None:
        family, addresses = _V2_UNSPEC, b""
    else:
        (src, sport), (dst, dport) = pair
        family = _V2_FAMILY[src.version, datagram]
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    body = addresses + encode_tlvs(tlvs)
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {len(body)} bytes is over 65535")
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def header_for_peer(
    version: ProxyVersion,
    peer: PeerInfo,
    local: Address | None,
    *,
    datagram: bool = False,
    verified: bool,
) -> bytes:
    """The header that tells a backend about *peer*, who reached us at *local*.

    v2 carries the TLS facts (:func:`~.proxy_tlvs.client_tlvs`; see there
    for *verified*). v1 cannot carry them, nor describe UDP: ValueError.
    """
    if version == "v1":
        if datagram:
            raise ValueError("PROXY v1 cannot describe UDP: use v2")
        return build_v1(peer.address, local)
    if version == "v2":
        tlvs = client_tlvs(peer, verified=verified)
        return build_v2(peer.address, local, datagram=datagram, tlvs=tlvs)
    raise ValueError(f"PROXY protocol version must be v1 or v2, not {version!r}")


def _same_family(
    source: Address | None, destination: Address | None
) -> tuple[tuple[_IP, int], tuple[_IP, int]] | None:
    """Both ends as IP addresses of one family and checked ports; None if one is unknown."""
    if source is None or destination is None:
        return None
    src, dst = _unmap(_ip(source[0])), _unmap(_ip(destination[0]))
    if src.version != dst.version:
        src, dst = _map(src), _map(dst)
    return (src, _port(source[1])), (dst, _port(destination[1]))


def _ip(host: str) -> _IP:
    # A link-local IPv6 address may carry a zone ("fe80::1%eth0"): it means
    # nothing to the backend, and neither format has room for it.
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    return address


def _unmap(address: _IP) -> _IP:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _map(address: _IP) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}")
    return address


def _text(address: _IP) -> str:
    """The address as inet_ntop prints it (the spec's v1 form), on every Python version."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"  # 3.11 would print ::ffff:102:304
    return str(address)


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"not a port 0-65535: {port!r}")
    return port
