"""Per-source limits in the TLS and DTLS servers: real floods on loopback, victims served.

Linux routes all of 127.0.0.0/8 to loopback, so a client bound to 127.0.0.2
(the flooder) and one bound to 127.0.0.3 (the victim) are two sources to a
server on 127.0.0.1. The servers here exempt nothing (the default exempts
loopback).
"""

from __future__ import annotations

import logging

import pytest
import trio

from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from tests.helpers import port_of, receive_exactly, running_dtls_server, running_tls_server
from trio_tls_dtls import (
    ClientSettings,
    CryptoOffload,
    DTLSChannel,
    DTLSEngine,
    HandshakeError,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.drivers.dtls.link import SocketLink

FLOODER, VICTIM = "127.0.0.2", "127.0.0.3"

# -- the sans-IO bucket --------------------------------------------------------------


async def test_tls_flooder_is_throttled_while_another_source_is_served(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_tls_dtls")
    # A slow refill: the flooder's burst is all it gets during the test.
    settings = pki.server_settings(per_source_rate=0.01, per_source_burst=3, per_source_exempt=())
    client = pki.client_settings(handshake_timeout=5.0)
    async with running_tls_server(settings) as server:
        port = port_of(server)
        accepted = refused = 0
        for _ in range(10):
            try:
                stream = await open_tls_stream(
                    "127.0.0.1", port, settings=client, local_address=FLOODER
                )
            except (HandshakeError, OSError):
                refused += 1
            else:
                accepted += 1
                await stream.aclose()
        assert (accepted, refused) == (3, 7)
        # Meanwhile another source is served as usual.
        stream = await open_tls_stream("127.0.0.1", port, settings=client, local_address=VICTIM)
        await stream.send_all(b"still here")
        assert await receive_exactly(stream, 10) == b"still here"
        assert stream.info.address[0] == "127.0.0.1"
        await stream.aclose()
    assert server.stats.rejected_per_source["rate"] == 7
    assert server.stats.handshakes_ok == 4
    warnings = [r.getMessage() for r in caplog.records if "per-source" in r.getMessage()]
    assert warnings and "127.0.0.2" in warnings[0]
    assert len(warnings) < 7  # one line a second at most, not one per refusal


async def test_tls_connection_cap_per_source(pki: PKIFiles) -> None:
    settings = pki.server_settings(
        per_source_rate=0, per_source_connections=2, per_source_exempt=()
    )
    client = pki.client_settings(handshake_timeout=5.0)
    async with running_tls_server(settings) as server:
        port = port_of(server)
        held = [
            await open_tls_stream("127.0.0.1", port, settings=client, local_address=FLOODER)
            for _ in range(2)
        ]
        with pytest.raises((HandshakeError, OSError)):
            await open_tls_stream("127.0.0.1", port, settings=client, local_address=FLOODER)
        other = await open_tls_stream("127.0.0.1", port, settings=client, local_address=VICTIM)
        await other.aclose()
        assert server.stats.rejected_per_source["connections"] == 1
        # When one of the flooder's connections ends, it may open another.
        await held.pop().aclose()
        with trio.fail_after(10):
            while server.source_limits is not None and server.source_limits.active(FLOODER) > 1:
                await trio.sleep(0.01)
        again = await open_tls_stream("127.0.0.1", port, settings=client, local_address=FLOODER)
        await again.aclose()
        for stream in held:
            await stream.aclose()


async def test_tls_loopback_is_exempt_by_default(pki: PKIFiles) -> None:
    settings = pki.server_settings(per_source_rate=0.01, per_source_burst=1)
    client = pki.client_settings(handshake_timeout=5.0)
    async with running_tls_server(settings) as server:
        for _ in range(3):
            stream = await open_tls_stream("127.0.0.1", port_of(server), settings=client)
            await stream.aclose()
    assert server.stats.handshakes_ok == 3
    assert not server.stats.rejected_per_source


async def test_dtls_flooder_is_throttled_after_its_cookie(pki: PKIFiles) -> None:
    settings = pki.server_settings(per_source_rate=0.01, per_source_burst=2, per_source_exempt=())
    client = pki.client_settings(handshake_timeout=2.0)
    async with running_dtls_server(settings) as server:
        port = port_of(server)
        outcomes = []
        for _ in range(3):
            try:
                channel = await open_dtls_channel(
                    "127.0.0.1", port, settings=client, local_address=FLOODER
                )
            except HandshakeError as exc:
                outcomes.append(exc.reason)
            else:
                outcomes.append("ok")
                await channel.aclose()
        assert outcomes == ["ok", "ok", "timeout"]
        # The refused ClientHellos carried valid cookies: the gate passed
        # them, the per-source limit dropped them.
        assert server.stats.dropped["per_source_rate"] >= 1
        channel = await open_dtls_channel("127.0.0.1", port, settings=client, local_address=VICTIM)
        await channel.send(b"served")
        with trio.fail_after(5):
            assert await channel.receive() == b"served"
        await channel.aclose()
    assert server.stats.handshakes_ok == 3


async def test_dtls_peer_cap_per_source(pki: PKIFiles) -> None:
    settings = pki.server_settings(
        per_source_rate=0, per_source_connections=1, per_source_exempt=()
    )
    client = pki.client_settings(handshake_timeout=2.0)
    async with running_dtls_server(settings) as server:
        port = port_of(server)
        first = await open_dtls_channel("127.0.0.1", port, settings=client, local_address=FLOODER)
        with pytest.raises(HandshakeError):
            await open_dtls_channel("127.0.0.1", port, settings=client, local_address=FLOODER)
        assert server.stats.dropped["per_source_connections"] >= 1
        other = await open_dtls_channel("127.0.0.1", port, settings=client, local_address=VICTIM)
        await other.aclose()
        await first.aclose()
        with trio.fail_after(10):
            while server.source_limits is not None and server.source_limits.active(FLOODER):
                await trio.sleep(0.01)
        again = await open_dtls_channel("127.0.0.1", port, settings=client, local_address=FLOODER)
        await again.aclose()


async def _channel_from(
    port: int, client: ClientSettings, source: tuple[str, int]
) -> tuple[DTLSChannel, trio.socket.SocketType]:
    """A DTLS channel from the exact local *source* (host, port), with its socket."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await sock.bind(source)
    await sock.connect(("127.0.0.1", port))
    engine = DTLSEngine.connect(client_context(client, dtls=True), "localhost", mtu=client.mtu)
    channel = DTLSChannel(SocketLink(sock), engine, offload=CryptoOffload(client.offload))
    try:
        with trio.fail_after(client.handshake_timeout):
            await channel.do_handshake()
    except BaseException:
        sock.close()
        raise
    return channel, sock


async def test_dtls_restart_from_the_same_port_at_the_cap(pki: PKIFiles) -> None:
    """A client that restarts (e.g. rebooted, same address and port) replaces its old peer.

    It must not be held to the cap by the very association it replaces.
    """
    settings = pki.server_settings(
        per_source_rate=0, per_source_connections=1, per_source_exempt=()
    )
    client = pki.client_settings(handshake_timeout=5.0)
    async with running_dtls_server(settings) as server:
        port = port_of(server)
        _, old_socket = await _channel_from(port, client, (FLOODER, 0))
        source = old_socket.getsockname()
        old_socket.close()  # gone without close_notify: the server still has the peer
        new, _ = await _channel_from(port, client, source)
        await new.send(b"again")
        with trio.fail_after(5):
            assert await new.receive() == b"again"
        assert server.stats.peers_replaced == 1
        assert not server.stats.dropped["per_source_connections"]
        await new.aclose()


async def test_tls_flood_at_once_beside_a_victim_costs_no_handshake_work(pki: PKIFiles) -> None:
    """Ten flooder connections at once and a victim among them: exactly the burst gets in."""
    settings = pki.server_settings(per_source_rate=0.001, per_source_burst=3, per_source_exempt=())
    client = pki.client_settings(handshake_timeout=10.0)
    outcomes: list[str] = []
    async with running_tls_server(settings) as server:
        port = port_of(server)

        async def flood_once() -> None:
            try:
                stream = await open_tls_stream(
                    "127.0.0.1", port, settings=client, local_address=FLOODER
                )
            except (HandshakeError, OSError, trio.BrokenResourceError):
                outcomes.append("refused")
            else:
                outcomes.append("ok")
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(flood_once)
            victim = await open_tls_stream("127.0.0.1", port, settings=client, local_address=VICTIM)
            await victim.send_all(b"ping")
            assert await receive_exactly(victim, 4) == b"ping"
            await victim.aclose()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 7
    assert server.stats.rejected_per_source["rate"] == 7
    assert server.stats.handshakes_ok == 4
    assert not server.stats.handshakes_failed  # refused before any TLS work


async def test_cookieless_client_hellos_spend_no_tokens(pki: PKIFiles) -> None:
    """A cookieless ClientHello's source may be forged: it costs that source nothing."""
    settings = pki.server_settings(per_source_rate=0.001, per_source_burst=1, per_source_exempt=())
    async with running_dtls_server(settings) as server:
        port = port_of(server)
        _, hello = first_client_hello(pki)
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind((FLOODER, 0))
            for _ in range(20):
                await sock.sendto(hello, ("127.0.0.1", port))
                with trio.fail_after(5):
                    reply = await sock.recv(2048)
                assert reply[0] == 22  # a HelloVerifyRequest
        assert server.stats.cookies_sent == 20
        # The source's one token is still there for its real handshake.
        channel = await open_dtls_channel(
            "127.0.0.1", port, settings=pki.client_settings(), local_address=FLOODER
        )
        await channel.aclose()
        assert not server.stats.dropped["per_source_rate"]
