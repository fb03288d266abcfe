"""The PROXY protocol parser and its settings (sans-IO: bytes in, header or error out)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import PKIFiles
from tests.proxy_headers import CLIENT_HELLO_START, TLVS, inet, inet6, tlv, v1, v2
from trio_tls_dtls.core.errors import ConfigError, TLSDError
from trio_tls_dtls.core.proxy_protocol import (
    MAX_HEADER_LENGTH,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    parse_proxy_header,
)
from trio_tls_dtls.core.settings import DEFAULT_PROXY_TRUSTED

PARSED_TLVS = ((0x01, b"h2"), (0x05, b"unique-id"), (0x04, b""))  # TLVS, as the parser returns them

# (header bytes, expected header) for every accepted form.
VALID = [
    (
        v1("TCP4 203.0.113.7 192.0.2.1 4242 443"),
        ProxyHeader(1, "PROXY", ("203.0.113.7", 4242), ("192.0.2.1", 443), 43),
    ),
    (
        v1("TCP6 2001:db8::7 2001:db8::1 65535 0"),
        ProxyHeader(1, "PROXY", ("2001:db8::7", 65535), ("2001:db8::1", 0), 44),
    ),
    (v1("UNKNOWN"), ProxyHeader(1, "PROXY", None, None, 15)),
    (v1("UNKNOWN ffff::1 ffff::2 1 2"), ProxyHeader(1, "PROXY", None, None, 35)),
    (
        v2(0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443), tlvs=TLVS),
        ProxyHeader(
            2, "PROXY", ("203.0.113.7", 4242), ("192.0.2.1", 443), 16 + 12 + len(TLVS), PARSED_TLVS
        ),
    ),
    (
        v2(0x21, inet6("2001:db8::7", "2001:db8::1", 4242, 443)),
        ProxyHeader(2, "PROXY", ("2001:db8::7", 4242), ("2001:db8::1", 443), 16 + 36),
    ),
    (
        v2(0x21, inet6("::ffff:203.0.113.7", "::1", 1, 2), tlvs=TLVS),
        ProxyHeader(
            2, "PROXY", ("::ffff:cb00:7107", 1), ("::1", 2), 16 + 36 + len(TLVS), PARSED_TLVS
        ),
    ),
    # LOCAL: the block (whatever its family) is discarded.
    (
        v2(0x11, inet("10.0.0.1", "10.0.0.2", 1, 2), command=0x0),
        ProxyHeader(2, "LOCAL", None, None, 28),
    ),
    (v2(0x00, command=0x0), ProxyHeader(2, "LOCAL", None, None, 16)),
    (v2(0x31, b"\x00" * 216, command=0x0), ProxyHeader(2, "LOCAL", None, None, 16 + 216)),
    # UNSPEC with PROXY: no addresses, whatever the block holds.
    (v2(0x00, b"ignored" + TLVS), ProxyHeader(2, "PROXY", None, None, 16 + 7 + len(TLVS))),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_headers_and_leftover(data: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(data + CLIENT_HELLO_START) == (expected, CLIENT_HELLO_START)
    assert parse_proxy_header(data) == (expected, b"")
    assert expected.length == len(data)


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_every_split_point_gives_the_same_result(data: bytes, expected: ProxyHeader) -> None:
    stream = data + CLIENT_HELLO_START
    for cut in range(len(stream) + 1):
        parser = ProxyHeaderParser()
        first = parser.feed(stream[:cut])
        if cut < len(data):
            assert first is None, cut
            assert parser.feed(stream[cut:]) == (expected, CLIENT_HELLO_START)
        else:
            assert first == (expected, stream[len(data) : cut])


def test_byte_by_byte() -> None:
    data, expected = VALID[4]
    parser = ProxyHeaderParser()
    results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == (expected, b"")
    with pytest.raises(RuntimeError, match="already finished"):
        parser.feed(b"x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (CLIENT_HELLO_START, "starts with byte 0x16 (a TLS record"),
        (b"GET / HTTP/1.1\r\n", "starts with byte 0x47"),
        (b"PROXX TCP4", "not a PROXY v1 header"),
        (b"PROXYTCP4", "not a PROXY v1 header"),
        (v1("TCP5 1.2.3.4 1.2.3.5 1 2"), "must be TCP4, TCP6 or UNKNOWN, not 'TCP5'"),
        (b"PROXY \r\n", "must be TCP4, TCP6 or UNKNOWN, not ''"),
        (v1("TCP4 1.2.3.4 1.2.3.5 1"), "needs 4 fields"),
        (v1("TCP4 1.2.3.4 1.2.3.5 1 2 3"), "needs 4 fields"),
        (v1("TCP4  1.2.3.4 1.2.3.5 1 2"), "needs 4 fields"),
        (v1("TCP4 1.2.3.4 1.2.3.999 1 2"), "destination address '1.2.3.999' is not an IP"),
        (v1("TCP4 01.2.3.4 1.2.3.5 1 2"), "source address '01.2.3.4' is not an IP"),
        (v1("TCP4 ::1 1.2.3.5 1 2"), "source address '::1' is not an IPv4 address"),
        (v1("TCP6 1.2.3.4 ::1 1 2"), "source address '1.2.3.4' is not an IPv6 address"),
        (v1("TCP6 fe80::1%eth0 ::1 1 2"), "is not an IPv6 address"),
        (v1("TCP4 1.2.3.4 1.2.3.5 65536 2"), "source port 65536 is above 65535"),
        (v1("TCP4 1.2.3.4 1.2.3.5 1 080"), "destination port '080' is not a decimal"),
        (v1("TCP4 1.2.3.4 1.2.3.5 +1 2"), "source port '+1' is not a decimal"),
        (v1("TCP4 1.2.3.4 1.2.3.5 -1 2"), "source port '-1' is not a decimal"),
        (v1("TCP4 1.2.3.4 1.2.3.5 123456 2"), "source port '123456' is not a decimal"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n", "bare LF"),
        (b"PROXY TCP4 \xff.2.3.4 1.2.3.5 1 2\r\n", "not ASCII"),
        (b"PROXY UNKNOWN " + b"x" * 100, f"no CRLF within {V1_MAX_LENGTH} bytes"),
        (V2_SIGNATURE[:5] + b"X", "wrong signature"),
        (v2(0x11, inet("1.2.3.4", "1.2.3.5", 1, 2), version=1), "version 1, not 2"),
        (v2(0x11, inet("1.2.3.4", "1.2.3.5", 1, 2), command=0x2), "command 0x2 is neither"),
        (v2(0x12, inet("1.2.3.4", "1.2.3.5", 1, 2)), "UDP over IPv4"),
        (v2(0x22, inet6("::1", "::2", 1, 2)), "UDP over IPv6"),
        (v2(0x31, b"\x00" * 216), "UNIX stream"),
        (v2(0x32, b"\x00" * 216), "UNIX datagram"),
        (v2(0x10, inet("1.2.3.4", "1.2.3.5", 1, 2)), "family/protocol byte 0x10"),
        (v2(0x41, b""), "family/protocol byte 0x41"),
        (v2(0x11, b"\x01" * 11), "11 bytes, too short for IPv4 (12)"),
        (v2(0x21, inet("1.2.3.4", "1.2.3.5", 1, 2)), "12 bytes, too short for IPv6 (36)"),
        (v2(0x11, inet("1.2.3.4", "1.2.3.5", 1, 2), tlvs=b"\x01\x00"), "TLV at offset 0"),
        (
            v2(0x11, inet("1.2.3.4", "1.2.3.5", 1, 2), tlvs=TLVS + tlv(0x02, b"abc")[:-1]),
            "TLV of type 0x02 claims 3 bytes",
        ),
    ],
)
def test_bad_headers_say_why(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_proxy_header(data)
    assert message in str(info.value)
    assert isinstance(info.value, TLSDError)
    assert isinstance(info.value, ValueError)


def test_refused_as_soon_as_possible() -> None:
    # A TLS client that does not speak PROXY fails at its first byte.
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"\x16")
    # A v2 header that announces too much fails at its fixed part.
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER_LENGTH)
    with pytest.raises(ProxyHeaderError, match=f"over the limit of {MAX_HEADER_LENGTH} bytes"):
        ProxyHeaderParser().feed(fixed)
    # The cap is the caller's to raise, up to the spec's own maximum.
    body = inet("1.2.3.4", "1.2.3.5", 1, 2) + tlv(0x04, b"\x00" * 60000)
    big = v2(0x11, body)
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        parse_proxy_header(big)
    result = parse_proxy_header(big, max_length=16 + 65535)
    assert result is not None and result[0].source == ("1.2.3.4", 1)


def test_truncated_headers_need_more_data() -> None:
    for data, _ in VALID:
        assert parse_proxy_header(data[:-1]) is None
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(b"PROXY TCP4 1.2.3.4") is None
    assert parse_proxy_header(V2_SIGNATURE[:7]) is None


def test_max_length_below_v1_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 107"):
        ProxyHeaderParser(max_length=50)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"PROXY ", V2_SIGNATURE]))
def test_random_bytes_raise_only_our_error(data: bytes, prefix: bytes) -> None:
    parser = ProxyHeaderParser()
    try:
        result = parser.feed(prefix + data)
    except ProxyHeaderError:
        return
    if result is not None:
        header, leftover = result
        assert header.length + len(leftover) == len(prefix + data)
    else:  # incomplete: never more than the cap buffered
        assert len(prefix + data) < MAX_HEADER_LENGTH


def test_settings_defaults_and_trust(pki: PKIFiles) -> None:
    default = pki.server_settings()
    assert default.proxy_protocol is False
    assert default.proxy_trusted == DEFAULT_PROXY_TRUSTED
    on = pki.server_settings(proxy_protocol=True, proxy_trusted=["10.0.0.0/8", "2001:db8::1"])
    assert on.proxy_trusted == ("10.0.0.0/8", "2001:db8::1/128")
    assert on.proxy_trusts("10.200.0.1")
    assert on.proxy_trusts("::ffff:10.0.0.1")  # an IPv4 client on a dual-stack socket
    assert on.proxy_trusts("2001:db8::1")
    assert not on.proxy_trusts("11.0.0.1")
    assert not on.proxy_trusts("2001:db8::2")
    assert not on.proxy_trusts("not-an-address")
    assert not on.proxy_trusts("127.0.0.1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proxy_trusted": ["10.0.0.5/24"]}, "entry '10.0.0.5/24' is not an IP address or network"),
        ({"proxy_trusted": ["lb.example"]}, "entry 'lb.example'"),
        ({"proxy_trusted": "10.0.0.0/8"}, "proxy_trusted must be a list"),
        ({"proxy_protocol": True, "proxy_trusted": []}, "proxy_trusted is empty"),
        ({"proxy_protocol": "yes"}, "proxy_protocol must be true or false"),
    ],
)
def test_bad_settings_name_the_entry(pki: PKIFiles, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        pki.server_settings(**options)


def test_parser_module_does_not_import_trio() -> None:
    import trio_tls_dtls.core.proxy_protocol as module

    imports = [line for line in Path(module.__file__).read_text().splitlines() if "import " in line]
    assert imports and not any("trio" in line or "socket" in line for line in imports)
