"""TLSStream honours trio.abc.Stream exactly, over in-memory transports."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from tests.conftest import PKIFiles
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import HandshakeError
from trio_tls_dtls.core.settings import OffloadSettings
from trio_tls_dtls.drivers.offload import CryptoOffload
from trio_tls_dtls.drivers.tls.stream import TLSStream

INLINE = OffloadSettings(handshakes=False, record_threshold=0)
THREADED = OffloadSettings(handshakes=True, record_threshold=1024)


def tls_pair(
    pki: PKIFiles,
    transports: tuple[trio.abc.Stream, trio.abc.Stream],
    offload: OffloadSettings = INLINE,
    **server_opts: object,
) -> tuple[TLSStream, TLSStream]:
    client_transport, server_transport = transports
    server_ctx = build_server_context(pki.server_settings(**server_opts))
    client_ctx = build_client_context(pki.client_settings())
    pool = CryptoOffload(offload)
    client = TLSStream(client_transport, TLSEngine.client(client_ctx, "localhost"), offload=pool)
    server = TLSStream(server_transport, TLSEngine.server(server_ctx), offload=pool)
    return client, server


@pytest.mark.parametrize("offload", [INLINE, THREADED], ids=["inline", "threaded"])
async def test_check_two_way_stream(pki: PKIFiles, offload: OffloadSettings) -> None:
    async def stream_maker() -> tuple[TLSStream, TLSStream]:
        return tls_pair(pki, trio.testing.memory_stream_pair(), offload)

    async def clogged_stream_maker() -> tuple[TLSStream, TLSStream]:
        client, server = tls_pair(pki, trio.testing.lockstep_stream_pair(), offload)
        # Handshake first: otherwise the "unclogging" receive would itself
        # have to send handshake bytes and get stuck. A lockstep transport
        # has no buffer, so the client must also read the TLS 1.3 session
        # tickets the server sends right after the handshake.
        async with trio.open_nursery() as nursery:

            async def client_side() -> None:
                await client.do_handshake()
                await client.receive_some()  # cancelled once the tickets are in

            nursery.start_soon(client_side)
            await server.do_handshake()
            nursery.cancel_scope.cancel()
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_large_echo_with_threaded_records(pki: PKIFiles, version: str) -> None:
    client, server = tls_pair(
        pki, trio.testing.memory_stream_pair(), THREADED, min_version=version, max_version=version
    )
    payload = os.urandom(1 << 20)

    async def echo() -> None:
        while data := await server.receive_some():
            await server.send_all(data)
        await server.aclose()

    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        await client.send_all(payload)
        while len(received) < len(payload):
            received += await client.receive_some()
        await client.aclose()
    assert received == payload
    assert client.bytes_sent == server.bytes_received == len(payload)


async def test_peer_info_after_handshake(pki: PKIFiles) -> None:
    client, server = tls_pair(pki, trio.testing.memory_stream_pair())
    with pytest.raises(RuntimeError):
        _ = client.info
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert client.info.protocol == "TLSv1.3"
    assert server.info.certificate is None
    await client.do_handshake()  # a second call is a no-op


async def test_handshake_failure_raises_handshake_error(pki: PKIFiles, other_pki: PKIFiles) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    server = TLSStream(
        server_transport, TLSEngine.server(build_server_context(pki.server_settings()))
    )
    client = TLSStream(
        client_transport,
        TLSEngine.client(build_client_context(other_pki.client_settings()), "localhost"),
    )
    results: dict[str, BaseException] = {}

    async def run(name: str, stream: TLSStream) -> None:
        try:
            await stream.do_handshake()
        except HandshakeError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "client", client)
        nursery.start_soon(run, "server", server)
    assert "certificate verify failed" in str(results["client"])
    # The client's alert reached the server, which reports it.
    assert "alert" in str(results["server"])
    # A broken stream stays broken, as trio's contract says.
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")


async def test_implicit_handshake_failure_is_broken_resource(pki: PKIFiles) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    server = TLSStream(
        server_transport, TLSEngine.server(build_server_context(pki.server_settings()))
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_transport.send_all, b"\x16\x03\x01\x00\x05hello")
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.receive_some()
    assert isinstance(info.value.__cause__, HandshakeError)


async def test_truncation_is_broken_resource(pki: PKIFiles) -> None:
    client, server = tls_pair(pki, trio.testing.memory_stream_pair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"data")
        assert await server.receive_some() == b"data"
    await client.transport_stream.aclose()  # vanish without close_notify
    with pytest.raises(trio.BrokenResourceError, match="truncated"):
        await server.receive_some()


async def test_send_close_notify_keeps_reading(pki: PKIFiles) -> None:
    client, server = tls_pair(pki, trio.testing.memory_stream_pair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await server.send_close_notify()
    assert await client.receive_some() == b""
    await client.send_all(b"still talking")
    assert await server.receive_some() == b"still talking"
    await client.aclose()
    assert await server.receive_some() == b""
    await server.aclose()


async def test_an_idle_stream_gives_back_what_a_large_echo_grew(pki: PKIFiles) -> None:
    # The engine's memory BIOs keep their largest buffer; the stream gives
    # them back before it waits for the peer again (see release_buffers).
    client, server = tls_pair(pki, trio.testing.memory_stream_pair())
    payload = os.urandom(128 * 1024)
    received = bytearray()

    async def client_side() -> None:
        await client.send_all(payload)
        while len(received) < len(payload):
            received.extend(await client.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        data = bytearray()
        while len(data) < len(payload):
            data.extend(await server.receive_some())
        await server.send_all(data)  # all 128 KiB through the output BIO at once
        assert server._engine.buffers_grown
    assert received == payload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_some)  # nothing comes: it waits
        await trio.testing.wait_all_tasks_blocked()
        assert not server._engine.buffers_grown
        await client.send_all(b"still works")
    await client.aclose()
    await server.aclose()
