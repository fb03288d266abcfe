"""serve_tls and open_tls_stream over real loopback sockets."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, receive_exactly, running_tls_server
from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    HandshakeError,
    PeerInfo,
    TLSStream,
    open_tls_stream,
)


async def echo_once(
    port: int, settings: ClientSettings, payload: bytes = b"ping", **kw: object
) -> TLSStream:
    stream = await open_tls_stream("127.0.0.1", port, settings=settings, **kw)  # type: ignore[arg-type]
    await stream.send_all(payload)
    assert await receive_exactly(stream, len(payload)) == payload
    return stream


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_echo(pki: PKIFiles, version: str) -> None:
    settings = pki.server_settings(min_version=version, max_version=version)
    async with running_tls_server(settings) as server:
        stream = await echo_once(port_of(server), pki.client_settings())
        assert stream.info.protocol == f"TLSv{version}"
        await stream.aclose()
    assert server.stats.handshakes_ok == 1


async def test_handshake_is_logged_with_peer_identity(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls")
    async with running_tls_server(pki.mtls_server_settings()) as server:
        stream = await echo_once(port_of(server), pki.client_settings(with_cert=True))
        await stream.aclose()
    lines = [r.getMessage() for r in caplog.records if "handshake ok" in r.getMessage()]
    assert len(lines) == 1
    assert "protocol=TLSv1.3" in lines[0]
    assert "peer=127.0.0.1:" in lines[0]
    assert "resumed=no" in lines[0]
    assert "CN=trio-tlsd client" in lines[0]


async def test_mutual_tls_handler_sees_identity(pki: PKIFiles) -> None:
    seen: list[PeerInfo] = []

    async def handler(stream: TLSStream, peer: PeerInfo) -> None:
        seen.append(peer)
        await stream.send_all((peer.subject or "").encode())

    async with running_tls_server(pki.mtls_server_settings(), handler) as server:
        stream = await open_tls_stream(
            "127.0.0.1", port_of(server), settings=pki.client_settings(with_cert=True)
        )
        assert b"CN=trio-tlsd client" in await stream.receive_some()
        await stream.aclose()
    assert seen[0].certificate is not None
    assert seen[0].address is not None and seen[0].address[0] == "127.0.0.1"


async def test_mutual_tls_rejects_client_without_certificate(pki: PKIFiles) -> None:
    async with running_tls_server(pki.mtls_server_settings()) as server:
        # TLS 1.3: the client's handshake completes before the server has
        # judged its (missing) certificate; the refusal arrives as an alert.
        with pytest.raises((HandshakeError, trio.BrokenResourceError)) as info:
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=pki.client_settings()
            )
            await stream.send_all(b"hello")
            await stream.receive_some()
        assert "certificate required" in str(info.value)
        # ...and the server stays up for a good client.
        good = await echo_once(port_of(server), pki.client_settings(with_cert=True))
        await good.aclose()
    assert server.stats.handshakes_failed
    assert server.stats.handshakes_ok == 1


async def test_mutual_tls_rejects_certificate_from_another_ca(
    pki: PKIFiles, other_pki: PKIFiles
) -> None:
    foreign = ClientSettings(
        ca_file=pki.ca, certificate=CertificateSettings(other_pki.client_cert, other_pki.client_key)
    )
    async with running_tls_server(pki.mtls_server_settings()) as server:
        with pytest.raises((HandshakeError, trio.BrokenResourceError)) as info:
            stream = await open_tls_stream("127.0.0.1", port_of(server), settings=foreign)
            await stream.send_all(b"hello")
            await stream.receive_some()
        assert "unknown ca" in str(info.value)
    assert any("certificate verify failed" in r for r in server.stats.handshakes_failed)


async def test_client_rejects_untrusted_server(pki: PKIFiles, other_pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        with pytest.raises(HandshakeError, match="unable to get local issuer certificate"):
            await open_tls_stream(
                "127.0.0.1", port_of(server), settings=other_pki.client_settings()
            )


async def test_hostname_verified_by_default(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        with pytest.raises(HandshakeError, match="hostname mismatch"):
            await open_tls_stream(
                "127.0.0.1",
                port_of(server),
                settings=pki.client_settings(),
                server_hostname="not-this-server.example",
            )
        stream = await open_tls_stream(
            "127.0.0.1",
            port_of(server),
            settings=pki.client_settings(),
            server_hostname="localhost",
        )
        await stream.aclose()


async def test_session_resumption(pki: PKIFiles) -> None:
    client_settings = pki.client_settings()  # sessions resume within one settings object
    async with running_tls_server(pki.server_settings()) as server:
        first = await echo_once(port_of(server), client_settings)
        session = first.session
        await first.aclose()
        second = await echo_once(port_of(server), client_settings, session=session)
        assert second.info.resumed
        await second.aclose()


async def test_sni_selects_certificate(pki: PKIFiles) -> None:
    other = pki.write_issued("sni-other", pki.pki.issue_server(["other.test", "*.other.test"]))
    sni = CertificateSettings(
        other.cert_file, other.key_file, server_names=("other.test", "*.other.test")
    )
    settings = pki.server_settings(sni_certificates=(sni,))
    async with running_tls_server(settings) as server:
        for name, expected in [
            ("localhost", "CN=localhost"),
            ("other.test", "CN=other.test"),
            ("www.other.test", "CN=other.test"),
        ]:
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=pki.client_settings(), server_hostname=name
            )
            assert stream.info.subject is not None and expected in stream.info.subject
            await stream.aclose()


async def test_alpn_negotiated(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(alpn=("echo/1",))) as server:
        stream = await echo_once(port_of(server), pki.client_settings(alpn=("x", "echo/1")))
        assert stream.info.alpn == "echo/1"
        await stream.aclose()


async def test_keylog_file(pki: PKIFiles, tmp_path: os.PathLike[str]) -> None:
    keylog = os.path.join(tmp_path, "keys.log")
    async with running_tls_server(pki.server_settings(keylog_file=keylog)) as server:
        stream = await echo_once(port_of(server), pki.client_settings())
        await stream.aclose()
    with open(keylog) as f:
        lines = f.read().splitlines()
    labels = {line.split()[0] for line in lines}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"} <= labels
    assert all(len(line.split()) == 3 for line in lines)
    assert os.stat(keylog).st_mode & 0o077 == 0


async def test_one_mebibyte_echo(pki: PKIFiles) -> None:
    payload = os.urandom(1 << 20)
    async with running_tls_server(pki.server_settings()) as server:
        stream = await open_tls_stream("127.0.0.1", port_of(server), settings=pki.client_settings())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            echoed = await receive_exactly(stream, len(payload))
        assert echoed == payload
        await stream.aclose()


async def test_64_clients_100_messages_each_size(pki: PKIFiles) -> None:
    sizes = (64, 1024, 16384)
    done = 0

    async def client(index: int, port: int) -> None:
        nonlocal done
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        for size in sizes:
            for n in range(100):
                message = (f"{index}:{size}:{n}:".encode() * size)[:size]
                await stream.send_all(message)
                assert await receive_exactly(stream, size) == message
                done += 1
        await stream.aclose()

    async with running_tls_server(pki.server_settings()) as server, trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(client, i, port_of(server))
    assert done == 64 * 100 * len(sizes)
    assert server.stats.handshakes_ok == 64


# -- bad peers: the server survives each and serves the next good client ----


async def raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def assert_still_serving(pki: PKIFiles, port: int) -> None:
    stream = await echo_once(port, pki.client_settings())
    await stream.aclose()


async def test_random_bytes_instead_of_client_hello(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        raw = await raw_connect(port_of(server))
        await raw.send_all(os.urandom(512))
        # The server answers with an alert (or nothing) and closes.
        with trio.fail_after(5):
            while await raw.receive_some():
                pass
        await raw.aclose()
        await assert_still_serving(pki, port_of(server))
    assert sum(server.stats.handshakes_failed.values()) == 1


async def test_truncated_client_hello_then_close(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        hello = _client_hello_bytes(pki)
        raw = await raw_connect(port_of(server))
        await raw.send_all(hello[: len(hello) // 2])
        await raw.aclose()
        await assert_still_serving(pki, port_of(server))
        with trio.fail_after(5):
            while not server.stats.handshakes_failed:
                await trio.sleep(0.01)
    assert any("during the handshake" in r for r in server.stats.handshakes_failed)


async def test_silent_client_dropped_at_handshake_timeout(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(handshake_timeout=0.3)) as server:
        raw = await raw_connect(port_of(server))
        with trio.fail_after(5):
            assert await raw.receive_some() == b""  # closed by the server
        await raw.aclose()
        await assert_still_serving(pki, port_of(server))
    assert server.stats.handshakes_failed["timeout"] == 1


async def test_disconnect_mid_handshake(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        sock = socket.create_connection(("127.0.0.1", port_of(server)))
        sock.sendall(_client_hello_bytes(pki))
        # Abort with RST rather than FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        await assert_still_serving(pki, port_of(server))


async def test_connections_over_the_limit_are_closed_at_once(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(max_connections=2)) as server:
        port = port_of(server)
        held = [
            await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
            for _ in range(2)
        ]
        raw = await raw_connect(port)
        with trio.fail_after(5):
            assert await raw.receive_some() == b""
        await raw.aclose()
        assert server.stats.rejected_over_limit == 1
        for stream in held:
            await stream.aclose()
        # Capacity frees up once the held connections close.
        with trio.fail_after(5):
            while server.stats.active:
                await trio.sleep(0.01)
        await assert_still_serving(pki, port)


async def test_a_burst_of_connections_is_taken_in_one_wake_up(pki: PKIFiles) -> None:
    # Twelve connections queue in the listen backlog before the server runs
    # again (a blocking connect completes in the kernel): the accept loop
    # takes them together and holds each to the limit, as one at a time.
    async with running_tls_server(pki.server_settings(max_connections=4)) as server:
        burst = [socket.create_connection(("127.0.0.1", port_of(server))) for _ in range(12)]
        try:
            with trio.fail_after(5):
                while server.stats.accepted < 12:
                    await trio.sleep(0.01)
            assert server.stats.rejected_over_limit == 8
            assert server.stats.active == 4
            refused = 0
            for sock in burst:
                sock.settimeout(0.05)
                # An admitted one times out: the server waits for its ClientHello.
                with contextlib.suppress(TimeoutError):
                    refused += sock.recv(1) == b""  # closed at once
            assert refused == 8
        finally:
            for sock in burst:
                sock.close()
        with trio.fail_after(5):
            while server.stats.active:
                await trio.sleep(0.01)
        await assert_still_serving(pki, port_of(server))


async def test_idle_connection_closed(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(idle_timeout=0.3)) as server:
        stream = await echo_once(port_of(server), pki.client_settings())
        with trio.fail_after(5):
            assert await stream.receive_some() == b""  # server's close_notify
        await stream.aclose()
    assert server.stats.idle_timeouts == 1


async def test_handler_exception_does_not_stop_the_server(pki: PKIFiles) -> None:
    calls = 0

    async def flaky(stream: TLSStream, peer: PeerInfo) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await stream.send_all(b"fine")

    async with running_tls_server(pki.server_settings(), flaky) as server:
        for _ in range(2):
            stream = await open_tls_stream(
                "127.0.0.1", port_of(server), settings=pki.client_settings()
            )
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                data = b""
            await stream.aclose()
        assert data == b"fine"
    assert server.stats.handler_errors == 1


def _client_hello_bytes(pki: PKIFiles) -> bytes:
    from trio_tls_dtls.core.contexts import build_client_context
    from trio_tls_dtls.core.engine import TLSEngine

    engine = TLSEngine.client(build_client_context(pki.client_settings()), "localhost")
    engine.do_handshake()
    return engine.bytes_to_send()
