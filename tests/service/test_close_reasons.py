"""Every close reason of the access line that the failure tests do not cover.

tests/service/test_observability.py has peer_closed, handshake_failed, idle_timeout
and handshake_timeout; here are handler_done, error, broken, drained and
cancelled (a hard stop), for TLS and DTLS.
"""

from __future__ import annotations

import logging

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from tests.service.test_observability import LOCAL, close_records, wait_for_records
from trio_tls_dtls import DTLSChannel, PeerInfo, TLSStream, open_dtls_channel, open_tls_stream

pytestmark = pytest.mark.timeout(60)


async def tls_scripted_handler(stream: TLSStream, peer: PeerInfo) -> None:
    """b"done": answer and return; b"boom": raise; anything else: echo until EOF."""
    while data := await stream.receive_some():
        if data == b"done":
            await stream.send_all(b"ok")
            return
        if data == b"boom":
            raise RuntimeError("handler blew up")
        await stream.send_all(data)


async def dtls_scripted_handler(channel: DTLSChannel, peer: PeerInfo) -> None:
    """The same script over datagrams."""
    async for data in channel:
        if data == b"done":
            await channel.send(b"ok")
            return
        if data == b"boom":
            raise RuntimeError("handler blew up")
        await channel.send(data)


async def test_tls_handler_done_error_broken(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = pki.client_settings()
    async with running_tls_server(pki.server_settings(), tls_scripted_handler) as server:
        port = port_of(server)
        stream = await open_tls_stream(LOCAL, port, settings=client)
        await stream.send_all(b"done")
        assert await stream.receive_some() == b"ok"
        await wait_for_records(caplog, 1)
        await stream.aclose()

        stream = await open_tls_stream(LOCAL, port, settings=client)
        await stream.send_all(b"boom")
        await wait_for_records(caplog, 2)
        await stream.aclose()

        stream = await open_tls_stream(LOCAL, port, settings=client)
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
        await stream.transport_stream.aclose()  # TCP FIN, no close_notify: a truncation
        await wait_for_records(caplog, 3)
    done, error, broken = close_records(caplog)
    assert done["reason"] == "handler_done"
    assert (done["bytes_in"], done["bytes_out"]) == (4, 2)
    assert error["reason"] == "error"
    assert broken["reason"] == "broken"
    assert broken["bytes_in"] == 5
    assert server.stats.closed_by_reason == {"handler_done": 1, "error": 1, "broken": 1}
    assert server.stats.handler_errors == 1


async def test_tls_drained_and_cancelled(pki: PKIFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = pki.client_settings()
    async with running_tls_server(pki.server_settings()) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=client)
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.drain)
            with trio.fail_after(5):
                assert await stream.receive_some() == b""  # the server's close_notify
            await stream.aclose()
        await wait_for_records(caplog, 1)
    [drained] = close_records(caplog)
    assert drained["reason"] == "drained"

    caplog.clear()
    # A hard stop (the server's nursery cancelled) with a connection open
    # still writes its line; before, aclose raised Cancelled first.
    async with running_tls_server(pki.server_settings()) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=client)
        await stream.send_all(b"abc")
        assert await stream.receive_some() == b"abc"
    await stream.aclose()
    [cancelled] = close_records(caplog)
    assert cancelled["reason"] == "cancelled"
    assert (cancelled["bytes_in"], cancelled["bytes_out"]) == (3, 3)
    assert server.stats.closed_by_reason == {"cancelled": 1}
    assert (server.stats.bytes_in, server.stats.bytes_out) == (3, 3)


async def test_dtls_handler_done_error(pki: PKIFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = pki.client_settings()
    async with running_dtls_server(pki.server_settings(), dtls_scripted_handler) as server:
        port = port_of(server)
        channel = await open_dtls_channel(LOCAL, port, settings=client)
        await channel.send(b"done")
        assert await channel.receive() == b"ok"
        await wait_for_records(caplog, 1)
        await channel.aclose()

        channel = await open_dtls_channel(LOCAL, port, settings=client)
        await channel.send(b"boom")
        await wait_for_records(caplog, 2)
        await channel.aclose()
    done, error = close_records(caplog)
    assert done["reason"] == "handler_done"
    assert (done["bytes_in"], done["bytes_out"]) == (4, 2)
    assert error["reason"] == "error"
    assert server.stats.closed_by_reason == {"handler_done": 1, "error": 1}


async def test_dtls_drained_and_cancelled(pki: PKIFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = pki.client_settings()
    async with running_dtls_server(pki.server_settings()) as server:
        channel = await open_dtls_channel(LOCAL, port_of(server), settings=client)
        await channel.send(b"x")
        assert await channel.receive() == b"x"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.drain)
            with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
                await channel.receive()  # the server's close_notify
            await channel.aclose()  # ours: the drain waits for it
        await wait_for_records(caplog, 1)
    [drained] = close_records(caplog)
    assert drained["reason"] == "drained"

    caplog.clear()
    async with running_dtls_server(pki.server_settings()) as server:
        channel = await open_dtls_channel(LOCAL, port_of(server), settings=client)
        await channel.send(b"abc")
        assert await channel.receive() == b"abc"
    await channel.aclose()
    [cancelled] = close_records(caplog)
    # Before, a peer cut in its handler was logged as "handshake_done".
    assert cancelled["reason"] == "cancelled"
    assert (cancelled["bytes_in"], cancelled["bytes_out"]) == (3, 3)
    assert server.stats.closed_by_reason == {"cancelled": 1}
