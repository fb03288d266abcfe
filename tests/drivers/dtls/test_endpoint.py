"""The DTLS endpoint against hostile, lossy and numerous peers (all on loopback)."""

from __future__ import annotations

import logging
import random
from functools import partial

import pytest
import trio

from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from tests.helpers import port_of, running_dtls_server
from trio_tls_dtls import DTLSChannel, HandshakeError, PeerInfo, open_dtls_channel
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.dtls_records import MAX_DTLS_DATAGRAM, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.drivers.dtls.link import SocketLink
from trio_tls_dtls.drivers.dtls.server import DTLSServer

ADDRESS = "127.0.0.1"


async def udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((ADDRESS, 0))
    return sock


async def wait_for(condition: object, limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_cookieless_flood_keeps_no_state_and_never_amplifies(pki: PKIFiles) -> None:
    _, hello = first_client_hello(pki)
    async with running_dtls_server(pki.server_settings()) as server:
        sockets = [await udp_socket() for _ in range(200)]
        for sock in sockets:
            await sock.sendto(hello, (ADDRESS, port_of(server)))
        for sock in sockets:
            with trio.fail_after(5):
                reply = await sock.recv(65536)
            assert len(reply) <= len(hello)
            assert reply[0] == 22 and reply[13] == 3  # a HelloVerifyRequest
            sock.close()
        await wait_for(lambda: server.stats.cookies_sent == 200)
        assert len(server.peers) == 0
        assert server.stats.peers_total == 0


async def test_smallest_client_hello_gets_a_smaller_reply(pki: PKIFiles) -> None:
    """Even the smallest well-formed ClientHello is answered with fewer bytes."""
    hello = bytearray(first_client_hello(pki)[1])
    parsed = parse_client_hello(bytes(hello))
    # Rebuild it with no extensions and one cipher suite: 13+12+2+32+1+1+2+2+1+1 = 67 bytes.
    body = (
        parsed.client_version.to_bytes(2, "big") + parsed.random + b"\x00" + b"\x00"
        + b"\x00\x02\xc0\x2b" + b"\x01\x00"
    )  # fmt: skip
    handshake = b"\x01" + len(body).to_bytes(3, "big") + b"\x00\x00" + bytes(3)
    handshake += len(body).to_bytes(3, "big") + body
    small = b"\x16\xfe\xfd\x00\x00" + bytes(6) + len(handshake).to_bytes(2, "big") + handshake
    parse_client_hello(small)
    async with running_dtls_server(pki.server_settings()) as server:
        sock = await udp_socket()
        await sock.sendto(small, (ADDRESS, port_of(server)))
        with trio.fail_after(5):
            reply = await sock.recv(65536)
        assert len(small) == 67
        assert len(reply) <= len(small)
        assert parse_client_hello(small).cookie == b""
        sock.close()


async def test_garbage_is_dropped_and_counted_and_service_goes_on(pki: PKIFiles) -> None:
    _, hello = first_client_hello(pki)
    rng = random.Random(1)
    junk = {
        "malformed": [hello[:40], hello[:-3], rng.randbytes(300)[:1] + b"\xfe\xfd" + bytes(60)],
        "not_handshake": [b"\x17\xfe\xfd" + rng.randbytes(60), b"\x15" + bytes(20)],
        "oversized": [bytes([22]) + rng.randbytes(MAX_DTLS_DATAGRAM)],
    }
    junk["malformed"][2] = b"\x16" + junk["malformed"][2][1:]
    async with running_dtls_server(pki.server_settings()) as server:
        sock = await udp_socket()
        for datagrams in junk.values():
            for datagram in datagrams:
                await sock.sendto(datagram, (ADDRESS, port_of(server)))
        await sock.sendto(b"", (ADDRESS, port_of(server)))
        expected = {reason: len(d) for reason, d in junk.items()} | {"empty": 1}
        await wait_for(lambda: all(server.stats.dropped[r] >= n for r, n in expected.items()))
        assert len(server.peers) == 0
        channel = await open_dtls_channel(ADDRESS, port_of(server), settings=pki.client_settings())
        await channel.send(b"still serving")
        assert await channel.receive() == b"still serving"
        await channel.aclose()
        sock.close()


async def test_tampered_cookie_is_rejected(pki: PKIFiles) -> None:
    client_engine, hello = first_client_hello(pki)
    async with running_dtls_server(pki.server_settings()) as server:
        sock = await udp_socket()
        await sock.sendto(hello, (ADDRESS, port_of(server)))
        client_engine.receive_datagram(await sock.recv(65536))
        client_engine.do_handshake()
        [second] = client_engine.datagrams_to_send()
        tampered = bytearray(second)
        cookie_at = second.index(parse_client_hello(second).cookie)
        tampered[cookie_at + 5] ^= 0xFF
        await sock.sendto(bytes(tampered), (ADDRESS, port_of(server)))
        await wait_for(lambda: server.stats.cookies_rejected == 1)
        assert server.stats.cookies_verified == 0
        assert len(server.peers) == 0
        # The same cookie from another address is no good either.
        other = await udp_socket()
        await other.sendto(second, (ADDRESS, port_of(server)))
        await wait_for(lambda: server.stats.cookies_rejected == 2)
        assert len(server.peers) == 0
        sock.close()
        other.close()


async def lossy_relay(
    listen: trio.socket.SocketType,
    target: tuple[str, int],
    rng: random.Random,
    *,
    loss: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay datagrams between clients and *target*, dropping, duplicating and reordering.

    Each client gets its own upstream socket, so the server sees distinct peers.
    """
    upstream: dict[tuple[str, int], trio.socket.SocketType] = {}

    async def send(sock: trio.socket.SocketType, data: bytes, to: tuple[str, int]) -> None:
        roll = rng.random()
        if roll < loss:
            return
        if roll < loss + 0.1:  # reorder: hold it back a little
            await trio.sleep(0.02)
        await sock.sendto(data, to)
        if rng.random() < 0.1:  # duplicate
            await sock.sendto(data, to)

    async with trio.open_nursery() as nursery:

        async def back(client: tuple[str, int], sock: trio.socket.SocketType) -> None:
            while True:
                data = await sock.recv(65536)
                nursery.start_soon(send, listen, data, client)

        task_status.started()
        while True:
            data, client = await listen.recvfrom(65536)
            if client not in upstream:
                upstream[client] = await udp_socket()
                nursery.start_soon(back, client, upstream[client])
            nursery.start_soon(send, upstream[client], data, target)


@pytest.mark.timeout(90)
async def test_loss_duplication_and_reordering(pki: PKIFiles) -> None:
    received: list[bytes] = []

    async def recording_echo(channel: DTLSChannel, peer: PeerInfo) -> None:
        async for message in channel:
            received.append(message)
            await channel.send(message)

    rng = random.Random(20261123)
    # At 20 % loss each way a handshake flight can need several retransmits
    # (1 s, 2 s, 4 s ...); the server must wait at least as long as the client.
    settings = pki.client_settings(handshake_timeout=60.0)
    server_settings = pki.server_settings(handshake_timeout=60.0)
    async with running_dtls_server(server_settings, recording_echo) as server:
        listen = await udp_socket()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(lossy_relay, listen, (ADDRESS, port_of(server)), rng, loss=0.2)
            )
            relay_port = listen.getsockname()[1]
            echoed: list[bytes] = []

            async def client(n: int) -> None:
                channel = await open_dtls_channel(ADDRESS, relay_port, settings=settings)
                for i in range(20):
                    payload = b"client %d message %d " % (n, i) + bytes(rng.randrange(400))
                    await channel.send(payload)
                    with trio.move_on_after(0.5):
                        reply = await channel.receive()
                        assert reply.startswith(b"client %d message " % n)
                        echoed.append(reply)
                await channel.aclose()

            async with trio.open_nursery() as clients:
                for n in range(4):
                    clients.start_soon(client, n)
            nursery.cancel_scope.cancel()
    assert server.stats.handshakes_ok >= 4
    assert len(received) == len(set(received)), "a datagram reached the handler twice"
    assert len(received) >= 20  # 80 sent, 20 % lost each way
    assert set(echoed) <= set(received)  # intact: every echo is something sent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [64, 1000])
async def test_64_peers_echo_100_datagrams(pki: PKIFiles, size: int) -> None:
    settings = pki.client_settings()
    async with running_dtls_server(pki.server_settings()) as server:

        async def peer(n: int) -> None:
            channel = await open_dtls_channel(ADDRESS, port_of(server), settings=settings)
            async with channel:
                for i in range(100):
                    payload = (b"%d:%d:" % (n, i)).ljust(size, b".")
                    await channel.send(payload)
                    with trio.fail_after(5):
                        assert await channel.receive() == payload

        async with trio.open_nursery() as nursery:
            for n in range(64):
                nursery.start_soon(peer, n)
    assert server.stats.handshakes_ok == 64


@pytest.mark.timeout(180)
async def test_1000_peers_stay_then_age_out(pki: PKIFiles) -> None:
    server_settings = pki.server_settings(idle_timeout=20.0, max_peers=1000)
    settings = pki.client_settings()
    channels: list[DTLSChannel] = []
    limiter = trio.CapacityLimiter(32)
    async with running_dtls_server(server_settings) as server:

        async def connect() -> None:
            async with limiter:
                channels.append(
                    await open_dtls_channel(ADDRESS, port_of(server), settings=settings)
                )

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(connect)
        # Most of them resumed the first one's session; in a resumed handshake
        # the client sends the last message, so the server may count it later.
        await wait_for(lambda: server.stats.handshakes_ok == 1000)
        assert len(server.peers) == 1000
        await wait_for(lambda: server.stats.peers_active == 0, limit=60)
        assert server.stats.idle_timeouts == 1000
        assert len(server.peers) == 0
        for channel in channels:
            await channel.aclose()


async def channel_from(sock: trio.socket.SocketType, pki: PKIFiles) -> DTLSChannel:
    """A client channel over *sock* (already connected): a client we control the port of."""
    engine = DTLSEngine.connect(
        client_context(pki.client_settings(), dtls=True), "localhost", mtu=1200
    )
    channel = DTLSChannel(SocketLink(sock), engine)
    with trio.fail_after(10):
        await channel.do_handshake()
    return channel


async def test_restarted_client_replaces_its_association(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        sock = await udp_socket()
        await sock.connect((ADDRESS, port_of(server)))
        first = await channel_from(sock, pki)
        await first.send(b"one")
        assert await first.receive() == b"one"
        # The client "restarts": a new handshake from the same address and port,
        # without closing the first association.
        second = await channel_from(sock, pki)
        await second.send(b"two")
        assert await second.receive() == b"two"
        assert server.stats.peers_replaced == 1
        assert len(server.peers) == 1
        await second.aclose()


async def test_full_table_evicts_the_oldest_idle_peer(pki: PKIFiles) -> None:
    settings = pki.client_settings()
    async with running_dtls_server(pki.server_settings(max_peers=2)) as server:
        oldest = await open_dtls_channel(ADDRESS, port_of(server), settings=settings)
        middle = await open_dtls_channel(ADDRESS, port_of(server), settings=settings)
        await middle.send(b"recent")
        assert await middle.receive() == b"recent"
        newest = await open_dtls_channel(ADDRESS, port_of(server), settings=settings)
        await wait_for(lambda: server.stats.peers_evicted == 1)
        assert len(server.peers) == 2
        for channel in (middle, newest):
            await channel.send(b"ok")
            assert await channel.receive() == b"ok"
        for channel in (oldest, middle, newest):
            await channel.aclose()


async def test_stalled_handshake_removed_at_handshake_timeout(pki: PKIFiles) -> None:
    client_engine, hello = first_client_hello(pki)
    async with running_dtls_server(pki.server_settings(handshake_timeout=0.5)) as server:
        sock = await udp_socket()
        await sock.sendto(hello, (ADDRESS, port_of(server)))
        client_engine.receive_datagram(await sock.recv(65536))
        client_engine.do_handshake()
        for datagram in client_engine.datagrams_to_send():
            await sock.sendto(datagram, (ADDRESS, port_of(server)))
        await wait_for(lambda: server.stats.peers_total == 1)
        # We never answer the server's flight.
        await wait_for(lambda: server.stats.handshakes_failed["timeout"] == 1)
        assert len(server.peers) == 0
        sock.close()


async def test_full_peer_queue_drops_without_blocking_others(pki: PKIFiles) -> None:
    async def slow(channel: DTLSChannel, peer: PeerInfo) -> None:
        await trio.sleep_forever()  # never reads

    settings = pki.client_settings()
    server_settings = pki.server_settings(peer_queue_size=4)
    async with trio.open_nursery() as nursery:
        server: DTLSServer = await nursery.start(
            partial(DTLSServer(slow, server_settings).serve, [await _bound(ADDRESS)])
        )
        port = server.addresses[0][1]
        stuck = await open_dtls_channel(ADDRESS, port, settings=settings)
        for i in range(50):
            await stuck.send(b"%d" % i)
        await wait_for(lambda: server.stats.dropped["queue_full"] > 0)
        # Another peer still completes its handshake.
        other = await open_dtls_channel(ADDRESS, port, settings=settings)
        assert other.handshake_done
        await stuck.aclose()
        await other.aclose()
        nursery.cancel_scope.cancel()


async def _bound(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def test_mutual_tls_over_dtls(
    pki: PKIFiles, other_pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str | None] = []

    async def whoami(channel: DTLSChannel, peer: PeerInfo) -> None:
        seen.append(peer.subject)
        await channel.send((peer.subject or "").encode())

    caplog.set_level(logging.INFO, logger="trio_tls_dtls")
    async with running_dtls_server(pki.mtls_server_settings(), whoami) as server:
        port = port_of(server)
        good = await open_dtls_channel(ADDRESS, port, settings=pki.client_settings(with_cert=True))
        assert b"client" in (await good.receive()).lower()
        await good.aclose()
        for bad in (pki.client_settings(), other_pki.client_settings(with_cert=True)):
            bad = type(bad)(ca_file=pki.ca, certificate=bad.certificate, handshake_timeout=3.0)
            with pytest.raises((HandshakeError, trio.BrokenResourceError)):
                channel = await open_dtls_channel(ADDRESS, port, settings=bad)
                await channel.receive()
        await wait_for(lambda: sum(server.stats.handshakes_failed.values()) >= 2)
    assert len(seen) == 1
    assert any("DTLS handshake ok: peer=127.0.0.1:" in r.message for r in caplog.records)
