"""Building PROXY headers: exact bytes from the spec, round trips through our parser, properties.

Bytes only: no sockets, no trio. The "spec vectors" are assembled by hand
from HAProxy's proxy-protocol.txt (signature, ``\\x21``, family byte,
length, addresses in network order, TLVs), independently of the builder.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from trio_tls_dtls.core.peer_info import PeerInfo
from trio_tls_dtls.core.proxy_header_builder import build_v1, build_v2, header_for_peer
from trio_tls_dtls.core.proxy_protocol import (
    V1_MAX_LENGTH,
    ProxyHeaderError,
    ProxyHeaderParser,
    parse_proxy_header,
)
from trio_tls_dtls.core.proxy_tlvs import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    PP2_TYPE_TRIO_PSK_IDENTITY,
    SSLTLV,
    client_tlvs,
    common_name,
    encode_tlvs,
)

SIGNATURE = bytes.fromhex("0D0A0D0A000D0A515549540A")  # the spec's 12 bytes, typed out


def certificate(cn: str | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "devices")]
    if cn is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    subject = x509.Name(names)
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


CLIENT_CERT = certificate("sensor-42.example ü")


def peer(**fields: object) -> PeerInfo:
    base: dict[str, object] = {
        "address": ("203.0.113.7", 50123),
        "transport": "tls",
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "resumed": False,
    }
    base.update(fields)
    return PeerInfo(**base)  # type: ignore[arg-type]


# -- exact bytes ---------------------------------------------------------------------


def test_v1_lines_are_the_spec_text() -> None:
    assert build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443)) == (
        b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"
    )
    assert build_v1(("2001:db8::7", 65535), ("2001:db8::1", 0)) == (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n"
    )
    assert build_v1(None, ("192.0.2.1", 443)) == b"PROXY UNKNOWN\r\n"
    assert build_v1(("192.0.2.1", 443), None) == b"PROXY UNKNOWN\r\n"


def test_v1_longest_line_fits_the_spec_maximum() -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = build_v1((longest, 65535), (longest, 65535))
    assert len(line) == 104 <= V1_MAX_LENGTH


def test_v2_tcp4_bytes_match_the_spec_layout() -> None:
    header = build_v2(("1.2.3.4", 5), ("10.0.0.1", 4433), tlvs=[(0x01, b"h2")])
    body = bytes([1, 2, 3, 4, 10, 0, 0, 1]) + b"\x00\x05\x11\x51" + b"\x01\x00\x02h2"
    assert header == SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


def test_v2_udp6_bytes_match_the_spec_layout() -> None:
    header = build_v2(("2001:db8::7", 1), ("::1", 2), datagram=True)
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes(15) + b"\x01"
    assert header == SIGNATURE + b"\x21\x22\x00\x24" + src + dst + b"\x00\x01\x00\x02"


def test_v2_unknown_address_is_unspec_with_only_tlvs() -> None:
    header = build_v2(None, ("10.0.0.1", 1), tlvs=[(0x04, b"")])
    assert header == SIGNATURE + b"\x21\x00\x00\x03" + b"\x04\x00\x00"
    parsed, rest = parse_proxy_header(header) or (None, b"")
    assert parsed is not None and (parsed.source, parsed.destination, rest) == (None, None, b"")


@pytest.mark.parametrize(
    ("source", "destination", "v1", "family"),
    [
        # A dual-stack socket's IPv4-mapped addresses are written as the IPv4 they are.
        (("::ffff:1.2.3.4", 5), ("::ffff:127.0.0.1", 6), b"TCP4 1.2.3.4 127.0.0.1 5 6", 0x11),
        (("::ffff:1.2.3.4", 5), ("127.0.0.1", 6), b"TCP4 1.2.3.4 127.0.0.1 5 6", 0x11),
        # An IPv4 client of a "::" wildcard socket: the IPv4 end goes IPv4-mapped.
        (("1.2.3.4", 5), ("::", 6), b"TCP6 ::ffff:1.2.3.4 :: 5 6", 0x21),
        # A zone means nothing to the backend.
        (("fe80::1%lo", 5), ("fe80::2", 6), b"TCP6 fe80::1 fe80::2 5 6", 0x21),
    ],
)
def test_both_ends_are_written_in_one_family(
    source: tuple[str, int], destination: tuple[str, int], v1: bytes, family: int
) -> None:
    assert build_v1(source, destination) == b"PROXY " + v1 + b"\r\n"
    assert build_v2(source, destination)[13] == family


@pytest.mark.parametrize(
    ("source", "destination", "why"),
    [
        (("example.com", 1), ("1.2.3.4", 2), "not an IP address: 'example.com'"),
        (("1.2.3.4", 70000), ("1.2.3.4", 2), "not a port 0-65535: 70000"),
    ],
)
def test_bad_addresses_are_refused(
    source: tuple[str, int], destination: tuple[str, int], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        build_v1(source, destination)
    with pytest.raises(ValueError, match=why):
        build_v2(source, destination)


def test_oversized_tlvs_are_refused() -> None:
    with pytest.raises(ValueError, match="over 65535"):
        encode_tlvs([(0x04, bytes(65536))])
    with pytest.raises(ValueError, match="one byte"):
        encode_tlvs([(256, b"")])
    with pytest.raises(ValueError, match="over 65535"):
        build_v2(("1.2.3.4", 1), ("1.2.3.4", 2), tlvs=[(0x04, bytes(65000))] * 2)


# -- the TLS facts as TLVs -----------------------------------------------------------


def test_client_tlvs_with_a_verified_certificate() -> None:
    tlvs = dict(
        client_tlvs(
            peer(alpn="h2", server_name="api.example", certificate=CLIENT_CERT), verified=True
        )
    )
    assert tlvs[PP2_TYPE_ALPN] == b"h2"
    assert tlvs[PP2_TYPE_AUTHORITY] == b"api.example"
    ssl = tlvs[PP2_TYPE_SSL]
    # client: SSL | CERT_CONN | CERT_SESS; verify 0; then VERSION, CN, CIPHER sub-TLVs.
    cn = "sensor-42.example ü".encode()
    assert ssl == (
        b"\x07\x00\x00\x00\x00"
        + b"\x21\x00\x07TLSv1.3"
        + b"\x22"
        + struct.pack("!H", len(cn))
        + cn
        + b"\x23\x00\x16TLS_AES_256_GCM_SHA384"
    )
    decoded = SSLTLV.decode(ssl)
    assert decoded.ssl and decoded.cert_in_connection and decoded.cert_in_session
    assert decoded.verified
    assert (decoded.version, decoded.cipher, decoded.common_name) == (
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        "sensor-42.example ü",
    )


def test_client_tlvs_resumed_and_without_a_certificate() -> None:
    resumed = SSLTLV.decode(
        dict(client_tlvs(peer(certificate=CLIENT_CERT, resumed=True), verified=True))[PP2_TYPE_SSL]
    )
    assert resumed.client == PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS  # sent with the session only
    assert resumed.verified
    plain = client_tlvs(
        peer(protocol="DTLSv1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256"), verified=True
    )
    assert [kind for kind, _ in plain] == [PP2_TYPE_SSL]  # no ALPN, no SNI
    ssl = SSLTLV.decode(plain[0][1])
    assert ssl.client == PP2_CLIENT_SSL
    assert ssl.verify != 0 and not ssl.verified  # the spec: non-zero unless a cert verified
    assert (ssl.version, ssl.cipher, ssl.common_name) == (
        "DTLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        None,
    )
    unverified = SSLTLV.decode(
        dict(client_tlvs(peer(certificate=CLIENT_CERT), verified=False))[PP2_TYPE_SSL]
    )
    assert unverified.client & PP2_CLIENT_CERT_CONN and not unverified.verified


def test_a_psk_client_is_named_by_its_identity() -> None:
    psk_peer = peer(cipher="PSK-AES128-GCM-SHA256", protocol="DTLSv1.2", psk_identity="sensor-7")
    tlvs = client_tlvs(psk_peer, verified=True)
    assert [kind for kind, _ in tlvs] == [PP2_TYPE_SSL, PP2_TYPE_TRIO_PSK_IDENTITY]
    assert tlvs[1] == (0xE4, b"sensor-7")
    ssl = SSLTLV.decode(tlvs[0][1])
    assert ssl.client == PP2_CLIENT_SSL and not ssl.verified  # no certificate, as the spec says


def test_a_certificate_without_a_common_name_sends_no_cn() -> None:
    no_cn = certificate(None)
    assert common_name(no_cn) is None
    ssl = SSLTLV.decode(dict(client_tlvs(peer(certificate=no_cn), verified=True))[PP2_TYPE_SSL])
    assert ssl.common_name is None and ssl.verified


def test_ssl_tlv_decode_refuses_malformed_values() -> None:
    with pytest.raises(ProxyHeaderError, match="shorter than its fixed 5"):
        SSLTLV.decode(b"\x01\x00")
    with pytest.raises(ProxyHeaderError, match="SSL sub-TLV of type 0x21 claims 9"):
        SSLTLV.decode(b"\x01\x00\x00\x00\x00\x21\x00\x09TLS")
    with pytest.raises(ProxyHeaderError, match="not ASCII"):
        SSLTLV.decode(b"\x01\x00\x00\x00\x00\x21\x00\x01\xff")
    extra = SSLTLV.decode(b"\x01\x00\x00\x00\x01\x24\x00\x06SHA256")  # SIG_ALG: kept raw
    assert extra.extra == ((0x24, b"SHA256"),) and extra.verify == 1


def test_header_for_peer() -> None:
    tls_peer = peer(certificate=CLIENT_CERT, server_name="api.example")
    v1 = header_for_peer("v1", tls_peer, ("192.0.2.1", 443), verified=True)
    assert v1 == b"PROXY TCP4 203.0.113.7 192.0.2.1 50123 443\r\n"
    v2 = header_for_peer("v2", tls_peer, ("192.0.2.1", 443), datagram=True, verified=True)
    parsed, rest = parse_proxy_header(v2 + b"payload", datagram=True) or (None, b"")
    assert parsed is not None and rest == b"payload"
    assert (parsed.source, parsed.destination, parsed.datagram) == (
        ("203.0.113.7", 50123),
        ("192.0.2.1", 443),
        True,
    )
    assert dict(parsed.tlvs)[PP2_TYPE_AUTHORITY] == b"api.example"
    assert SSLTLV.decode(dict(parsed.tlvs)[PP2_TYPE_SSL]).common_name == "sensor-42.example ü"
    with pytest.raises(ValueError, match="v1 cannot describe UDP"):
        header_for_peer("v1", tls_peer, ("192.0.2.1", 443), datagram=True, verified=True)
    with pytest.raises(ValueError, match="v1 or v2"):
        header_for_peer("v3", tls_peer, None, verified=True)  # type: ignore[arg-type]


def test_the_parser_keeps_tcp_and_udp_apart() -> None:
    tcp = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2))
    udp = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), datagram=True)
    with pytest.raises(ProxyHeaderError, match="UDP over IPv4, not TCP"):
        parse_proxy_header(udp)
    with pytest.raises(ProxyHeaderError, match="TCP over IPv4, not UDP"):
        parse_proxy_header(tcp, datagram=True)
    with pytest.raises(ProxyHeaderError, match="v1 header cannot describe UDP"):
        parse_proxy_header(build_v1(("1.2.3.4", 1), ("5.6.7.8", 2)), datagram=True)


# -- round trips and properties ------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=6)


def unmapped(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def same_ip(text: str, other: str) -> bool:
    """The same address, an IPv4-mapped IPv6 one and its IPv4 counting as the same."""
    return unmapped(text) == unmapped(other)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(ipv4, ipv6)),
    ports,
    ports,
    st.booleans(),
    tlv_lists,
    st.binary(max_size=32),
)
def test_v2_round_trips_through_our_parser(
    hosts: tuple[str, str],
    sport: int,
    dport: int,
    datagram: bool,
    tlvs: list[tuple[int, bytes]],
    payload: bytes,
) -> None:
    header = build_v2((hosts[0], sport), (hosts[1], dport), datagram=datagram, tlvs=tlvs)
    result = parse_proxy_header(header + payload, datagram=datagram, max_length=len(header) + 200)
    assert result is not None
    parsed, rest = result
    assert rest == payload
    assert (parsed.version, parsed.command, parsed.length, parsed.datagram) == (
        2,
        "PROXY",
        len(header),
        datagram,
    )
    assert parsed.tlvs == tuple(tlvs)
    assert parsed.source is not None and parsed.destination is not None
    assert same_ip(parsed.source[0], hosts[0]) and parsed.source[1] == sport
    assert same_ip(parsed.destination[0], hosts[1]) and parsed.destination[1] == dport


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(ipv6, ipv4)), ports, ports)
def test_v1_round_trips_through_our_parser(hosts: tuple[str, str], sport: int, dport: int) -> None:
    line = build_v1((hosts[0], sport), (hosts[1], dport))
    assert len(line) <= V1_MAX_LENGTH
    result = parse_proxy_header(line + b"\x16\x03\x01")
    assert result is not None
    parsed, rest = result
    assert rest == b"\x16\x03\x01" and parsed.length == len(line)
    assert parsed.source is not None and parsed.destination is not None
    assert same_ip(parsed.source[0], hosts[0]) and parsed.source[1] == sport
    assert same_ip(parsed.destination[0], hosts[1]) and parsed.destination[1] == dport


@given(
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(st.characters(codec="ascii"), max_size=40)),
    st.integers(0, 7),
    st.integers(0, 2**32 - 1),
)
def test_ssl_tlv_round_trips(cn: str | None, cipher: str | None, client: int, verify: int) -> None:
    value = SSLTLV(client, verify, version="TLSv1.2", cipher=cipher, common_name=cn)
    assert SSLTLV.decode(value.encode()) == value


@given(tlv_lists, st.data())
def test_every_prefix_of_a_header_is_incomplete_never_an_error(
    tlvs: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    header = build_v2(("192.0.2.1", 1), ("2001:db8::1", 2), tlvs=tlvs)
    cut = data.draw(st.integers(0, len(header) - 1))
    parser = ProxyHeaderParser(max_length=max(len(header), V1_MAX_LENGTH))
    assert parser.feed(header[:cut]) is None
    assert parser.feed(header[cut:]) is not None


@given(st.binary(min_size=1, max_size=200), st.integers(0, 60))
def test_corrupted_headers_raise_only_our_error(noise: bytes, position: int) -> None:
    header = bytearray(build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(0x20, b"\x01" * 9)]))
    header[position % len(header)] ^= noise[0] or 1
    for datagram in (False, True):
        with contextlib.suppress(ProxyHeaderError):  # anything else fails the test
            parse_proxy_header(bytes(header) + noise, datagram=datagram)


@given(st.binary(max_size=100))
def test_ssl_tlv_decode_of_random_bytes_raises_only_our_error(value: bytes) -> None:
    try:
        decoded = SSLTLV.decode(value)
    except ProxyHeaderError:
        return
    assert decoded.client == value[0]
