"""The TLS server behind a PROXY protocol header: trust, the header's address, refusals."""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_tls_server
from tests.proxy_headers import CLIENT_HELLO_START, TLVS, inet, inet6, v1, v2
from tests.service.test_observability import close_records, wait_for_records
from trio_tls_dtls import PeerInfo, TLSStream
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import TLSDError
from trio_tls_dtls.core.peer_info import format_address
from trio_tls_dtls.drivers.tls import server as tls_server

pytestmark = pytest.mark.timeout(60)


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
