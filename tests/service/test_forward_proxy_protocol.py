"""Client identity to backends: PROXY headers in front of forwarded TCP streams and UDP datagrams.

The backends here are real sockets on loopback. Each one reads the header
twice: with a decoder written in this file straight from HAProxy's spec
(byte offsets, ``inet_ntop``, TLV walking; nothing of ours), and with our
own parser (:mod:`trio_tls_dtls.core.proxy_protocol`), and both must agree
with what the client knows about itself (its own address, the cipher it
negotiated, the certificate it sent).
"""

from __future__ import annotations

import re
import signal
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import (
    _read_until_exit,
    assert_one_line_error,
    bound_port,
    run_cli,
    serving_without_stop,
)
from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from trio_tls_dtls import (
    ClientSettings,
    ServerSettings,
    forward_tcp,
    forward_udp,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.core.proxy_protocol import ProxyHeader, parse_proxy_header
from trio_tls_dtls.core.proxy_tlvs import SSLTLV

pytestmark = pytest.mark.timeout(60)

SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
CLIENT_CN = "trio-tlsd client"  # the development PKI's client certificate


# -- the spec, decoded by hand -----------------------------------------------------------


def walk_tlvs(data: bytes) -> dict[int, bytes]:
    """type -> value, for TLVs framed as the spec says (1 type byte, 2 length bytes)."""
    found = {}
    i = 0
    while i < len(data):
        kind, length = data[i], data[i + 1] << 8 | data[i + 2]
        found[kind] = data[i + 3 : i + 3 + length]
        assert len(found[kind]) == length, "TLV runs past the header"
        i += 3 + length
    return found


@dataclass
class SpecHeader:
    """A v2 header as the spec lays it out."""

    family: int
    source: tuple[str, int]
    destination: tuple[str, int]
    tlvs: dict[int, bytes]
    ssl_client: int
    ssl_verify: int
    ssl_subs: dict[int, bytes]


def spec_v2_length(data: bytes) -> int | None:
    """The whole header's length once 16 bytes are in, from bytes 15-16."""
    if len(data) < 16:
        return None
    return 16 + (data[14] << 8 | data[15])


def spec_decode_v2(data: bytes) -> SpecHeader:
    assert data[:12] == SIGNATURE
    assert data[12] == 0x21  # version 2, command PROXY
    family = data[13]
    body = data[16 : spec_v2_length(data)]
    af, size = {0x11: (socket.AF_INET, 4), 0x12: (socket.AF_INET, 4)}.get(
        family, (socket.AF_INET6, 16)
    )
    assert family in (0x11, 0x12, 0x21, 0x22), hex(family)
    src = socket.inet_ntop(af, body[:size])
    dst = socket.inet_ntop(af, body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    tlvs = walk_tlvs(body[2 * size + 4 :])
    ssl = tlvs[0x20]
    return SpecHeader(
        family,
        (src, sport),
        (dst, dport),
        tlvs,
        ssl[0],
        struct.unpack("!I", ssl[1:5])[0],
        walk_tlvs(ssl[5:]),
    )


# -- backends ----------------------------------------------------------------------------


@dataclass
class Seen:
    """What a backend read: each connection's (or datagram's) header bytes and payload."""

    headers: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)


def header_end(data: bytes) -> int | None:
    """Where a v1 or v2 header ends in *data*, found by the spec's rules; None if not yet."""
    if data.startswith(b"PROXY "):
        end = data.find(b"\r\n")
        return None if end < 0 else end + 2
    return spec_v2_length(data) if len(data) >= 16 and data[:12] == SIGNATURE else None


@asynccontextmanager
async def tcp_backend(host: str = "127.0.0.1") -> AsyncIterator[tuple[int, Seen]]:
    """Reads the header first, then answers each chunk with b"<" + chunk + b">"."""
    seen = Seen()

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while (end := header_end(data)) is None or len(data) < end:
            chunk = await stream.receive_some(65536)
            assert chunk, f"the connection ended inside the header: {data!r}"
            data += chunk
        seen.headers.append(data[:end])
        seen.arrived.set()
        rest = data[end:]
        while True:
            if rest:
                seen.payloads.append(rest)
                await stream.send_all(b"<" + rest + b">")
            rest = await stream.receive_some(65536)
            if not rest:
                break
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, handler, 0, host=host))
        try:
            yield listener.socket.getsockname()[1], seen
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def udp_backend() -> AsyncIterator[tuple[int, Seen]]:
    """Each datagram: a v2 header, then the payload; answers b"udp:" + payload, no header."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    seen = Seen()

    async def serve() -> None:
        while True:
            data, address = await sock.recvfrom(65536)
            end = spec_v2_length(data)
            assert end is not None
            seen.headers.append(data[:end])
            seen.payloads.append(data[end:])
            seen.arrived.set()
            await sock.sendto(b"udp:" + data[end:], address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield sock.getsockname()[1], seen
        finally:
            nursery.cancel_scope.cancel()
            sock.close()


def ours(header: bytes, *, datagram: bool = False) -> ProxyHeader:
    result = parse_proxy_header(header, datagram=datagram)
    assert result is not None and result[1] == b""
    return result[0]


def local_of(stream: object) -> tuple[str, int]:
    sockname = stream.transport_stream.socket.getsockname()  # type: ignore[attr-defined]
    return (sockname[0], sockname[1])


# -- TCP ---------------------------------------------------------------------------------


async def test_v2_tells_a_tcp_backend_the_client_and_its_tls_facts(pki: PKIFiles) -> None:
    async with tcp_backend() as (backend, seen):
        handler = forward_tcp("127.0.0.1", backend, proxy_protocol="v2")
        settings = pki.mtls_server_settings(alpn=("h2",))
        async with running_tls_server(settings, handler) as server:
            client = pki.client_settings(with_cert=True, alpn=("h2",))
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=client, server_hostname="localhost"
            )
            me, server_address = local_of(stream), ("127.0.0.1", port_of(server))
            await stream.send_all(b"hello backend")
            assert await stream.receive_some() == b"<hello backend>"
            await stream.aclose()
    [header] = seen.headers
    assert seen.payloads == [b"hello backend"]  # the header came first, alone

    spec = spec_decode_v2(header)
    assert spec.family == 0x11  # TCP over IPv4
    assert (spec.source, spec.destination) == (me, server_address)
    assert spec.tlvs[0x01] == b"h2"  # PP2_TYPE_ALPN
    assert spec.tlvs[0x02] == b"localhost"  # PP2_TYPE_AUTHORITY: the SNI name
    # PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, verified (0).
    assert (spec.ssl_client, spec.ssl_verify) == (0x07, 0)
    assert spec.ssl_subs[0x21] == stream.info.protocol.encode() == b"TLSv1.3"
    assert spec.ssl_subs[0x23] == stream.info.cipher.encode()
    assert spec.ssl_subs[0x22] == CLIENT_CN.encode()

    parsed = ours(header)
    assert (parsed.version, parsed.command, parsed.datagram) == (2, "PROXY", False)
    assert (parsed.source, parsed.destination) == (me, server_address)
    ssl = SSLTLV.decode(dict(parsed.tlvs)[0x20])
    assert ssl.verified and ssl.cert_in_connection and ssl.cert_in_session
    assert (ssl.version, ssl.cipher, ssl.common_name) == (
        "TLSv1.3",
        stream.info.cipher,
        CLIENT_CN,
    )


async def test_v2_without_a_client_certificate_and_on_resumption(pki: PKIFiles) -> None:
    async with tcp_backend() as (backend, seen):
        handler = forward_tcp("127.0.0.1", backend, proxy_protocol="v2")
        async with running_tls_server(pki.mtls_server_settings(), handler) as server:
            client = pki.client_settings(with_cert=True)
            for _ in range(2):  # the second one resumes the first one's session
                stream = await open_tls_stream("127.0.0.1", port_of(server), settings=client)
                await stream.send_all(b"x")
                assert await stream.receive_some() == b"<x>"
                with trio.fail_after(5):  # the TLS 1.3 ticket arrives after the handshake
                    while stream.session is None:
                        await stream.send_all(b"y")
                        await stream.receive_some()
                await stream.aclose()
            assert stream.info.resumed
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=pki.client_settings()
            )
            await stream.send_all(b"z")
            assert await stream.receive_some() == b"<z>"
            await stream.aclose()
    full, resumed, anonymous = (spec_decode_v2(h) for h in seen.headers)
    assert (full.ssl_client, full.ssl_verify) == (0x07, 0)
    # Resumed: the certificate came with the session, not over this connection.
    assert (resumed.ssl_client, resumed.ssl_verify) == (0x05, 0)
    assert resumed.ssl_subs[0x22] == CLIENT_CN.encode()
    # No certificate: SSL only, verify non-zero (the spec), no CN, no SNI (an IP was dialled).
    assert anonymous.ssl_client == 0x01 and anonymous.ssl_verify != 0
    assert 0x22 not in anonymous.ssl_subs and 0x02 not in anonymous.tlvs
    assert not SSLTLV.decode(dict(ours(seen.headers[2]).tlvs)[0x20]).verified


async def test_v1_is_one_line_before_the_client_bytes(pki: PKIFiles) -> None:
    async with tcp_backend() as (backend, seen):
        handler = forward_tcp("127.0.0.1", backend, proxy_protocol="v1")
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=pki.client_settings()
            )
            host, port = local_of(stream)
            server_port = port_of(server)
            await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
            assert await stream.receive_some() == b"<GET / HTTP/1.0\r\n\r\n>"
            await stream.aclose()
    assert seen.headers == [f"PROXY TCP4 {host} 127.0.0.1 {port} {server_port}\r\n".encode()]
    parsed = ours(seen.headers[0])
    assert (parsed.version, parsed.source, parsed.destination) == (
        1,
        (host, port),
        ("127.0.0.1", server_port),
    )


async def test_v2_over_ipv6(pki: PKIFiles) -> None:
    async with tcp_backend() as (backend, seen):
        handler = forward_tcp("127.0.0.1", backend, proxy_protocol="v2")
        async with running_tls_server(pki.server_settings(), handler, host="::1") as server:
            stream = await open_tls_stream(
                "::1", port_of(server), settings=pki.client_settings(), server_hostname="localhost"
            )
            me, server_port = local_of(stream), port_of(server)
            await stream.send_all(b"six")
            assert await stream.receive_some() == b"<six>"
            await stream.aclose()
    spec = spec_decode_v2(seen.headers[0])
    assert spec.family == 0x21  # TCP over IPv6
    assert spec.source == me and me[0] == "::1"
    assert spec.destination == ("::1", server_port)
    assert ours(seen.headers[0]).source == spec.source


def test_bad_proxy_protocol_arguments() -> None:
    with pytest.raises(ValueError, match="v1' cannot describe UDP"):
        forward_udp("127.0.0.1", 53, proxy_protocol="v1")
    with pytest.raises(ValueError, match="None, 'v1' or 'v2'"):
        forward_tcp("127.0.0.1", 80, proxy_protocol="v3")  # type: ignore[arg-type]
    forward_udp("127.0.0.1", 53, proxy_protocol="v2")  # fine


# -- UDP ---------------------------------------------------------------------------------


async def test_v2_in_front_of_every_datagram_to_a_udp_backend(pki: PKIFiles) -> None:
    async with udp_backend() as (backend, seen):
        handler = forward_udp("127.0.0.1", backend, proxy_protocol="v2")
        async with running_dtls_server(pki.mtls_server_settings(), handler) as server:
            channel = await open_dtls_channel(
                "127.0.0.1",
                port_of(server),
                settings=pki.client_settings(with_cert=True),
                server_hostname="localhost",
            )
            me, server_port = channel.local_address, port_of(server)
            for message in (b"first", b"second"):
                await channel.send(message)
                with trio.fail_after(5):
                    assert await channel.receive() == b"udp:" + message  # replies: no header
            await channel.aclose()
    assert seen.payloads == [b"first", b"second"]
    first, second = seen.headers
    assert first == second  # built once per peer
    spec = spec_decode_v2(first)
    assert spec.family == 0x12  # UDP over IPv4
    assert (spec.source, spec.destination) == (me, ("127.0.0.1", server_port))
    assert spec.tlvs[0x02] == b"localhost"
    assert (spec.ssl_client, spec.ssl_verify) == (0x07, 0)
    assert spec.ssl_subs[0x21] == b"DTLSv1.2"
    assert spec.ssl_subs[0x23] == channel.info.cipher.encode()
    assert spec.ssl_subs[0x22] == CLIENT_CN.encode()
    parsed = ours(first, datagram=True)
    assert parsed.datagram and (parsed.source, parsed.destination) == (
        spec.source,
        spec.destination,
    )


async def test_a_psk_device_is_named_to_the_udp_backend(pki: PKIFiles) -> None:
    # The IoT gateway: devices with a pre-shared key and no certificate; the
    # plain UDP backend learns which device each datagram is from.
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    server = ServerSettings(psk_keys={"sensor-7": key})
    async with udp_backend() as (backend, seen):
        handler = forward_udp("127.0.0.1", backend, proxy_protocol="v2")
        async with running_dtls_server(server, handler) as dtls:
            client = ClientSettings(psk_identity="sensor-7", psk_key=key, verify=False)
            channel = await open_dtls_channel("127.0.0.1", port_of(dtls), settings=client)
            me = channel.local_address
            await channel.send(b"21.5C")
            with trio.fail_after(5):
                assert await channel.receive() == b"udp:21.5C"
            await channel.aclose()
    spec = spec_decode_v2(seen.headers[0])
    assert spec.source == me
    assert spec.tlvs[0xE4] == b"sensor-7"  # our application-specific PSK identity TLV
    assert spec.ssl_client == 0x01 and spec.ssl_verify != 0  # no certificate
    assert b"PSK" in spec.ssl_subs[0x23]
    assert 0x22 not in spec.ssl_subs


# -- trio-tlsd serve ---------------------------------------------------------------------


async def test_cli_forwards_with_v2_headers_over_tcp_and_udp(pki: PKIFiles) -> None:
    async with tcp_backend() as (tcp_port, tcp_seen), udp_backend() as (udp_port, udp_seen):
        flags = [
            "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            "--forward-tcp", f"127.0.0.1:{tcp_port}", "--forward-udp", f"127.0.0.1:{udp_port}",
            "--forward-proxy-protocol", "v2",
        ]  # fmt: skip
        async with serving_without_stop(*flags) as (process, banner):
            port = bound_port(banner, "tcp")
            settings = pki.client_settings()
            stream = await open_tls_stream("127.0.0.1", port, settings=settings)
            me = local_of(stream)
            await stream.send_all(b"over tls")
            assert await stream.receive_some() == b"<over tls>"
            channel = await open_dtls_channel("127.0.0.1", port, settings=settings)
            await channel.send(b"over dtls")
            with trio.fail_after(5):
                assert await channel.receive() == b"udp:over dtls"
            await stream.aclose()
            await channel.aclose()
            process.send_signal(signal.SIGTERM)
            rest = await _read_until_exit(process)
            assert process.returncode == 0, rest
    tcp = spec_decode_v2(tcp_seen.headers[0])
    udp = spec_decode_v2(udp_seen.headers[0])
    assert (tcp.family, tcp.source, tcp.destination) == (
        0x11,
        me,
        ("127.0.0.1", port),
    )
    assert (udp.family, udp.destination) == (0x12, ("127.0.0.1", port))
    assert udp.ssl_subs[0x21] == b"DTLSv1.2" and tcp.ssl_subs[0x21] == b"TLSv1.3"


def test_cli_refuses_what_a_proxy_header_cannot_do(pki: PKIFiles, tmp_path: Path) -> None:
    files = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    v1_udp = run_cli(
        "serve", *files, "--forward-udp", "127.0.0.1:53", "--forward-proxy-protocol", "v1"
    )
    assert_one_line_error(v1_udp, "--forward-proxy-protocol v1", "UDP", "use v2")
    alone = run_cli("serve", *files, "--forward-proxy-protocol", "v2")
    assert_one_line_error(alone, "--forward-proxy-protocol v2 needs --forward-tcp or --forward-udp")
    assert_one_line_error(
        run_cli("serve", "--forward-proxy-protocol", "v3"), "--forward-proxy-protocol", "v3"
    )
    config = tmp_path / "serve.toml"
    config.write_text('forward_proxy_protocol = "v2 "\n')
    assert_one_line_error(
        run_cli("check-config", str(config)), str(config), "'forward_proxy_protocol'"
    )
    config.write_text('forward_udp = "127.0.0.1:53"\nforward_proxy_protocol = "v1"\n')
    assert_one_line_error(run_cli("check-config", str(config)), "v1 cannot describe UDP")
    config.write_text('forward_tcp = "127.0.0.1:80"\nforward_proxy_protocol = "v1"\n')
    result = run_cli("check-config", str(config), cwd=tmp_path)
    assert re.search(r'^forward_proxy_protocol = "v1"$', result.stdout, re.M), result
