"""Idleness is counted in application data, not bytes; the optional lifetime cap (issue 14, item 4).

Real servers over loopback with short timeouts, so each test takes seconds.
A client that trickles ciphertext (a record that never completes, or DTLS
records that fail authentication) must not hold its slot past
``idle_timeout``; application data in either direction must keep it;
``max_connection_lifetime`` ends even a busy connection, with close_notify.
The rules themselves are pinned under a virtual clock in
tests/drivers/test_lifecycle_deadlines.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from trio_tls_dtls import DTLSChannel, PeerInfo, TLSStream, open_dtls_channel, open_tls_stream
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.drivers.dtls.link import SocketLink

LOCAL = "127.0.0.1"
IDLE = 1.5
TRICKLE = 0.3  # well inside IDLE: under a per-byte idle timer the slot is never freed
# Closed at IDLE after the last application data; the bound only makes a
# failure end the test instead of hanging it.
CLOSED_WITHIN = 3 * IDLE


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.01)


async def trickle(send: Callable[[bytes], Awaitable[object]], chunks: list[bytes]) -> None:
    """Send *chunks* one every TRICKLE seconds (then the last again), until the server has gone."""
    index = 0
    with contextlib.suppress(trio.BrokenResourceError, OSError):
        while True:
            await send(chunks[min(index, len(chunks) - 1)])
            index += 1
            await trio.sleep(TRICKLE)


# -- TLS -------------------------------------------------------------------------------


async def test_tls_a_record_trickled_byte_by_byte_does_not_hold_the_slot(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(idle_timeout=IDLE)) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
        raw = stream.transport_stream
        # An application-data record header announcing 16 KiB, then one
        # byte of "ciphertext" at a time: the record never completes.
        header = b"\x17\x03\x03\x40\x00"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, raw.send_all, [header, b"\x00"])
            with trio.fail_after(CLOSED_WITHIN), contextlib.suppress(trio.BrokenResourceError):
                # The server's close_notify, then its FIN (or a reset: it
                # closed with trickled bytes still unread).
                while await raw.receive_some():
                    pass
            nursery.cancel_scope.cancel()
        await raw.aclose()
        await wait_for(lambda: server.stats.closed == 1)
    assert server.stats.closed_by_reason == {"idle_timeout": 1}
    assert server.stats.idle_timeouts == 1


async def test_tls_application_data_either_way_keeps_a_connection(pki: PKIFiles) -> None:
    async def ticks(stream: TLSStream, peer: PeerInfo) -> None:
        """Sends a tick every TRICKLE seconds and never reads."""
        while True:
            await stream.send_all(b".")
            await trio.sleep(TRICKLE)

    settings = pki.server_settings(idle_timeout=IDLE)
    client = pki.client_settings()
    # Client to server: an echo now and then, for twice the idle timeout.
    async with running_tls_server(settings) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=client)
        for _ in range(int(2 * IDLE / TRICKLE)):
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            await trio.sleep(TRICKLE)
        await stream.aclose()
        await wait_for(lambda: server.stats.closed == 1)
    assert server.stats.closed_by_reason == {"peer_closed": 1}
    # Server to client only: the client never sends after the handshake.
    async with running_tls_server(settings, ticks) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=client)
        with trio.move_on_after(2 * IDLE):
            while True:
                assert await stream.receive_some() != b""  # not closed for idleness
        await stream.aclose()
        await wait_for(lambda: server.stats.closed == 1)
    assert server.stats.idle_timeouts == 0


async def test_tls_lifetime_ends_a_busy_connection_with_close_notify(pki: PKIFiles) -> None:
    async def ticks(stream: TLSStream, peer: PeerInfo) -> None:
        while True:
            await stream.send_all(b".")
            await trio.sleep(0.1)

    settings = pki.server_settings(idle_timeout=IDLE, max_connection_lifetime=1.0)
    async with running_tls_server(settings, ticks) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        with trio.fail_after(CLOSED_WITHIN):
            while await stream.receive_some():  # b"": the server's close_notify
                pass
        await stream.aclose()
        await wait_for(lambda: server.stats.closed == 1)
    assert server.stats.closed_by_reason == {"lifetime": 1}
    assert server.stats.idle_timeouts == 0


# -- DTLS ------------------------------------------------------------------------------


async def _channel_over(sock: trio.socket.SocketType, pki: PKIFiles) -> DTLSChannel:
    """A client channel over *sock*, so the test can send raw datagrams from its port."""
    context = client_context(pki.client_settings(), dtls=True)
    channel = DTLSChannel(SocketLink(sock), DTLSEngine.connect(context, "localhost", mtu=1200))
    with trio.fail_after(10):
        await channel.do_handshake()
    return channel


def _forged_record(sequence: int) -> bytes:
    """An epoch-1 application-data record whose authentication fails: dropped, never data."""
    body = bytes(range(48))
    header = b"\x17\xfe\xfd\x00\x01" + sequence.to_bytes(6, "big")
    return header + len(body).to_bytes(2, "big") + body


async def test_dtls_records_that_fail_authentication_do_not_hold_a_peer(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings(idle_timeout=IDLE)) as server:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind((LOCAL, 0))
        await sock.connect((LOCAL, port_of(server)))
        channel = await _channel_over(sock, pki)
        await channel.send(b"hello")
        assert await channel.receive() == b"hello"
        forged = [_forged_record(1000 + n) for n in range(100)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, sock.send, forged)
            with trio.fail_after(CLOSED_WITHIN):
                try:
                    await channel.receive()
                except trio.EndOfChannel:  # the server's close_notify
                    pass
                else:
                    raise AssertionError("the server sent data, not close_notify")
            nursery.cancel_scope.cancel()
        await channel.aclose()
        await wait_for(lambda: server.stats.peers_active == 0)
    assert server.stats.closed_by_reason == {"idle_timeout": 1}
    assert server.stats.datagrams_received >= 5  # the forged records did arrive


async def test_dtls_lifetime_ends_a_busy_peer_with_close_notify(pki: PKIFiles) -> None:
    async def ticks(channel: DTLSChannel, peer: PeerInfo) -> None:
        while True:
            await channel.send(b".")
            await trio.sleep(0.1)

    settings = pki.server_settings(idle_timeout=IDLE, max_connection_lifetime=1.0)
    async with running_dtls_server(settings, ticks) as server:
        channel = await open_dtls_channel(LOCAL, port_of(server), settings=pki.client_settings())
        with trio.fail_after(CLOSED_WITHIN):
            try:
                while True:
                    await channel.receive()
            except trio.EndOfChannel:
                pass
        await channel.aclose()
        await wait_for(lambda: server.stats.peers_active == 0)
    assert server.stats.closed_by_reason == {"lifetime": 1}
