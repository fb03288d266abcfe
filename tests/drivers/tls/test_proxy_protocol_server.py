"""The PROXY protocol: the sans-IO parser, the TLS server that uses it, flags and keys."""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.conftest import PKIFiles
from tests.helpers import port_of, running_tls_server
from tests.service.test_observability import close_records, wait_for_records
from trio_tls_dtls import PeerInfo, TLSStream
from trio_tls_dtls.cli.config_file import DEFAULTS, load_config_file
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options, settings_from
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import ConfigError, TLSDError
from trio_tls_dtls.core.peer_info import format_address
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
from trio_tls_dtls.drivers.tls import server as tls_server
from trio_tls_dtls.service.metrics import metrics_registry
from trio_tls_dtls.service.service import Service

pytestmark = pytest.mark.timeout(60)

CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00"  # what a TLS stream starts with

# -- building headers -----------------------------------------------------------


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
PARSED_TLVS = ((0x01, b"h2"), (0x05, b"unique-id"), (0x04, b""))

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

# -- the parser -----------------------------------------------------------------


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


# -- settings, flags and keys ---------------------------------------------------


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


def _options(*flags: str) -> dict[str, Any]:
    return serve_options(build_parser().parse_args(["serve", *flags]))


def test_flags(pki: PKIFiles, tmp_path: Path) -> None:
    assert _options()["proxy_protocol"] is False
    assert _options()["proxy_trusted"] == list(DEFAULT_PROXY_TRUSTED)
    options = _options(
        "--proxy-protocol", "--proxy-trusted", "10.0.0.0/24, 192.0.2.1", "--proxy-trusted", "::1"
    )
    assert options["proxy_protocol"] is True
    assert options["proxy_trusted"] == ["10.0.0.0/24", "192.0.2.1", "::1"]
    options.update(cert=pki.server_cert, key=pki.server_key)
    settings, _ = settings_from(options, make_dev_pki=False)
    assert settings.proxy_protocol
    assert settings.proxy_trusted == ("10.0.0.0/24", "192.0.2.1/32", "::1/128")
    # Flags override the file's list rather than add to it.
    config = tmp_path / "serve.toml"
    config.write_text('proxy_protocol = true\nproxy_trusted = ["10.9.0.0/16"]\n')
    from_file = _options("--config", str(config))
    assert (from_file["proxy_protocol"], from_file["proxy_trusted"]) == (True, ["10.9.0.0/16"])
    both = _options("--config", str(config), "--proxy-trusted", "10.8.0.1")
    assert both["proxy_trusted"] == ["10.8.0.1"]


def test_bad_flag_names_the_entry() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--proxy-trusted", "10.0.0.0/8,bogus"])
    assert_one_line_error(
        run_cli("serve", "--proxy-trusted", "10.0.0.0/8,10.0.0.1/8"),
        "--proxy-trusted",
        "'10.0.0.1/8' is not an IP address or network",
    )


def test_config_keys(tmp_path: Path) -> None:
    assert DEFAULTS["proxy_protocol"] is False
    path = tmp_path / "serve.toml"
    path.write_text('proxy_protocol = true\nproxy_trusted = ["10.0.0.0/8", "::1"]\n')
    assert load_config_file(path) == {
        "proxy_protocol": True,
        "proxy_trusted": ["10.0.0.0/8", "::1"],
    }
    for text, message in [
        ('proxy_protocol = "yes"\n', "key 'proxy_protocol': expected true or false"),
        ('proxy_trusted = ["10.0.0.0/33"]\n', "key 'proxy_trusted': entry '10.0.0.0/33'"),
        ('proxy_trusted = "10.0.0.0/8"\n', "key 'proxy_trusted': expected a list of strings"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config_file(path)
        assert str(path) in str(info.value)
        assert message in str(info.value)


def test_empty_trusted_list_in_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("proxy_protocol = true\nproxy_trusted = []\n")
    assert_one_line_error(run_cli("check-config", str(path)), "proxy_trusted is empty")


def test_metrics_exported_only_when_on(pki: PKIFiles) -> None:
    off = Service(pki.server_settings(), dtls=False)
    assert "proxy_headers" not in generate_latest(metrics_registry(off)).decode()
    service = Service(pki.server_settings(proxy_protocol=True), dtls=False)
    assert service.tls is not None
    service.tls.stats.proxy_accepted = 3
    service.tls.stats.proxy_rejected["untrusted"] = 2
    body = generate_latest(metrics_registry(service)).decode()
    assert 'trio_tlsd_tls_proxy_headers_total{outcome="accepted",reason=""} 3.0' in body
    assert 'trio_tlsd_tls_proxy_headers_total{outcome="rejected",reason="untrusted"} 2.0' in body


# -- the TLS server -------------------------------------------------------------


async def whoami_handler(stream: TLSStream, peer: PeerInfo) -> None:
    """Say which address the server believes the client has, then echo."""
    assert stream.peer_address == peer.address
    await stream.send_all(format_address(peer.address).encode() + b"\n")
    while data := await stream.receive_some():
        await stream.send_all(data)


async def connect(port: int, *, bind: str | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if bind is not None:
        await sock.bind((bind, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def proxied_tls(
    pki: PKIFiles, port: int, header: bytes, *, same_segment: bool = False
) -> TLSStream:
    """A TLS client behind a pretend load balancer that sends *header* first."""
    transport = await connect(port)
    engine = TLSEngine.client(client_context(pki.client_settings()), "localhost")
    if same_segment:  # the header and the ClientHello in one write
        assert not engine.do_handshake()
        await transport.send_all(header + engine.bytes_to_send())
    else:
        await transport.send_all(header)
    stream = TLSStream(transport, engine)
    with trio.fail_after(10):
        await stream.do_handshake()
    return stream


async def read_line(stream: TLSStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
    return data


async def assert_closed_by_server(transport: trio.SocketStream) -> None:
    # A reset is also a refusal.
    with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
        assert await transport.receive_some() == b""


@pytest.mark.parametrize(
    ("header", "seen"),
    [
        (v1("TCP4 203.0.113.7 192.0.2.1 4242 443"), "203.0.113.7:4242"),
        (v1("TCP6 2001:db8::7 2001:db8::1 4242 443"), "[2001:db8::7]:4242"),
        (v2(0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443), tlvs=TLVS), "203.0.113.7:4242"),
        (v2(0x21, inet6("2001:db8::7", "2001:db8::1", 4242, 443)), "[2001:db8::7]:4242"),
    ],
)
async def test_the_header_address_is_the_peer(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture, header: bytes, seen: str
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(proxy_protocol=True, proxy_trusted=["127.0.0.1/32"])
    async with running_tls_server(settings, whoami_handler) as server:
        stream = await proxied_tls(pki, port_of(server), header)
        assert await read_line(stream) == seen.encode() + b"\n"
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.aclose()
        await wait_for_records(caplog, 1)
        assert server.stats.proxy_accepted == 1
        assert not server.stats.proxy_rejected
    [record] = close_records(caplog)
    assert record["peer"] == seen
    assert record["reason"] == "peer_closed"
    assert any(f"peer={seen}" in r.getMessage() for r in caplog.records), "handshake log line"


async def test_header_and_client_hello_in_one_segment(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefetched: list[bytes] = []

    class RecordingTLSStream(TLSStream):
        def __init__(self, *args: Any, initial_data: bytes = b"", **kwargs: Any) -> None:
            prefetched.append(bytes(initial_data))
            super().__init__(*args, initial_data=initial_data, **kwargs)

    monkeypatch.setattr(tls_server, "TLSStream", RecordingTLSStream)
    settings = pki.server_settings(proxy_protocol=True)
    async with running_tls_server(settings, whoami_handler) as server:
        header = v2(0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443))
        stream = await proxied_tls(pki, port_of(server), header, same_segment=True)
        assert await read_line(stream) == b"203.0.113.7:4242\n"
        await stream.send_all(b"after the leftover")
        assert await stream.receive_some() == b"after the leftover"
        await stream.aclose()
    # The server read the start of the ClientHello with the header, and
    # the handshake still worked: the leftover reached the engine first.
    assert len(prefetched) == 1 and prefetched[0][:1] == b"\x16"


async def test_local_and_unknown_keep_the_socket_address(pki: PKIFiles) -> None:
    settings = pki.server_settings(proxy_protocol=True)
    async with running_tls_server(settings, whoami_handler) as server:
        for header in (v2(0x00, command=0x0), v1("UNKNOWN"), v2(0x00)):
            stream = await proxied_tls(pki, port_of(server), header)
            assert (await read_line(stream)).startswith(b"127.0.0.1:")
            await stream.aclose()
        assert server.stats.proxy_accepted == 3


async def test_untrusted_peer_is_refused_before_reading(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(proxy_protocol=True, proxy_trusted=["127.0.0.1/32"])
    async with running_tls_server(settings, whoami_handler) as server:
        transport = await connect(port_of(server), bind="127.0.0.2")
        await assert_closed_by_server(transport)  # without waiting for a header
        await transport.aclose()
        await wait_for_records(caplog, 1)
        assert server.stats.proxy_rejected == {"untrusted": 1}
        assert server.stats.proxy_accepted == 0
        assert server.stats.closed_by_reason["proxy_untrusted"] == 1
        assert server.stats.handshakes_ok == 0
    [record] = close_records(caplog)
    assert record["reason"] == "proxy_untrusted"
    assert str(record["peer"]).startswith("127.0.0.2:")  # the socket's peer, not the header's
    assert any("not in proxy_trusted" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("send", "why", "logged"),
    [
        (v1("TCP4 203.0.113.7 192.0.2.1 99999 443"), "invalid", "port 99999 is above 65535"),
        (b"PROXY TCP4 203.0.113.7", "timeout", "no complete PROXY header within 0.5s"),
        (CLIENT_HELLO_START, "invalid", "starts with byte 0x16"),
    ],
)
async def test_bad_or_late_header_is_refused(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture, send: bytes, why: str, logged: str
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(proxy_protocol=True, handshake_timeout=0.5)
    async with running_tls_server(settings, whoami_handler) as server:
        transport = await connect(port_of(server))
        await transport.send_all(send)
        await assert_closed_by_server(transport)
        await transport.aclose()
        await wait_for_records(caplog, 1)
        assert server.stats.proxy_rejected == {why: 1}
        assert server.stats.closed_by_reason["proxy_header"] == 1
    [record] = close_records(caplog)
    assert record["reason"] == "proxy_header"
    assert str(record["peer"]).startswith("127.0.0.1:")
    assert any(logged in r.getMessage() for r in caplog.records)


async def test_eof_in_the_header_is_refused(pki: PKIFiles) -> None:
    settings = pki.server_settings(proxy_protocol=True)
    async with running_tls_server(settings, whoami_handler) as server:
        transport = await connect(port_of(server))
        await transport.send_all(b"PROXY TCP4 ")
        await transport.send_eof()
        await assert_closed_by_server(transport)
        await transport.aclose()
        with trio.fail_after(10):
            while server.stats.active:
                await trio.sleep(0.01)
        assert server.stats.proxy_rejected == {"closed": 1}


async def test_without_the_feature_a_header_is_a_failed_handshake(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_tls_server(pki.server_settings(), whoami_handler) as server:
        header = v1("TCP4 203.0.113.7 192.0.2.1 4242 443")
        with pytest.raises(TLSDError):
            await proxied_tls(pki, port_of(server), header)
        await wait_for_records(caplog, 1)
        assert server.stats.proxy_accepted == 0
        assert not server.stats.proxy_rejected
    [record] = close_records(caplog)
    assert record["reason"] == "handshake_failed"
    assert str(record["peer"]).startswith("127.0.0.1:")


async def test_many_proxied_connections_at_once(pki: PKIFiles) -> None:
    settings = pki.server_settings(proxy_protocol=True)
    async with running_tls_server(settings, whoami_handler) as server:

        async def one(i: int) -> None:
            header = v1(f"TCP4 198.51.100.{i} 192.0.2.1 {1000 + i} 443")
            stream = await proxied_tls(pki, port_of(server), header, same_segment=i % 2 == 0)
            assert await read_line(stream) == f"198.51.100.{i}:{1000 + i}\n".encode()
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(1, 21):
                nursery.start_soon(one, i)
        assert server.stats.proxy_accepted == 20


def test_parser_module_does_not_import_trio() -> None:
    import trio_tls_dtls.core.proxy_protocol as module

    imports = [line for line in Path(module.__file__).read_text().splitlines() if "import " in line]
    assert imports and not any("trio" in line or "socket" in line for line in imports)


def test_argparse_type_error_is_specific() -> None:
    from trio_tls_dtls.cli.flag_values import network_list

    assert network_list("10.0.0.0/8,::1") == ["10.0.0.0/8", "::1"]
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not an IP address"):
        network_list("10.0.0.0/8,x")


async def test_per_source_limits_see_the_header_address(pki: PKIFiles) -> None:
    # The balancer is loopback (exempt from the limits); its clients are not.
    settings = pki.server_settings(proxy_protocol=True, per_source_connections=1)
    async with running_tls_server(settings, whoami_handler) as server:
        first = await proxied_tls(pki, port_of(server), v1("TCP4 203.0.113.7 192.0.2.1 1 443"))
        assert await read_line(first) == b"203.0.113.7:1\n"
        with pytest.raises(TLSDError):  # the same client again: over its cap of 1
            await proxied_tls(pki, port_of(server), v1("TCP4 203.0.113.7 192.0.2.1 2 443"))
        other = await proxied_tls(pki, port_of(server), v1("TCP4 203.0.113.8 192.0.2.1 3 443"))
        assert await read_line(other) == b"203.0.113.8:3\n"
        assert server.stats.rejected_per_source["connections"] == 1
        assert server.stats.proxy_accepted == 3
        await first.aclose()
        await other.aclose()
