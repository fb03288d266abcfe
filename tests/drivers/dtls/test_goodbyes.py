"""DTLS goodbyes (issue 14, item 5): an evicted peer gets close_notify; a drain is not
held by a peer that is gone. Real endpoints over loopback; every wait bounded.

The CLI's side of it (SIGTERM with a killed client, then a restart on the
same port) is in tests/cli/test_dtls_drain_cli.py; the drain's rule under a
virtual clock in tests/drivers/test_lifecycle_deadlines.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server
from trio_tls_dtls import DTLSChannel, open_dtls_channel
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.drivers.dtls.link import SocketLink
from trio_tls_dtls.drivers.dtls.server import GOODBYE_GRACE

LOCAL = "127.0.0.1"


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.01)


async def test_an_evicted_peer_receives_close_notify(pki: PKIFiles) -> None:
    settings = pki.client_settings()
    async with running_dtls_server(pki.server_settings(max_peers=1)) as server:
        first = await open_dtls_channel(LOCAL, port_of(server), settings=settings)
        await first.send(b"one")
        assert await first.receive() == b"one"
        second = await open_dtls_channel(LOCAL, port_of(server), settings=settings)
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await first.receive()  # ends cleanly: the server's close_notify
        await second.send(b"two")
        assert await second.receive() == b"two"
        assert server.stats.peers_evicted == 1
        await first.aclose()
        await second.aclose()
        await wait_for(lambda: server.stats.peers_active == 0)
    assert server.stats.closed_by_reason == {"removed": 1, "peer_closed": 1}


async def test_a_drain_cuts_a_silent_peer_after_the_grace_and_retransmits(pki: PKIFiles) -> None:
    """A client that has gone silent (killed, unplugged) holds the drain for the grace only."""
    async with running_dtls_server(pki.server_settings(drain_timeout=30.0)) as server:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind((LOCAL, 0))
        await sock.connect((LOCAL, port_of(server)))
        context = client_context(pki.client_settings(), dtls=True)
        silent = DTLSChannel(SocketLink(sock), DTLSEngine.connect(context, "localhost", mtu=1200))
        await silent.send(b"hello")
        assert await silent.receive() == b"hello"
        polite = await open_dtls_channel(LOCAL, port_of(server), settings=pki.client_settings())
        await polite.send(b"hi")
        assert await polite.receive() == b"hi"

        async def answer_the_goodbye() -> None:
            with pytest.raises(trio.EndOfChannel):
                await polite.receive()
            await polite.aclose()  # our own close_notify back

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_the_goodbye)
            # Far below the drain timeout (30s) and the idle timeout (300s).
            with trio.fail_after(GOODBYE_GRACE + 3):
                await server.drain()
        assert server.stats.peers_active == 0
        assert server.stats.closed_by_reason == {"drained": 2}
        # The silent client never read: its socket holds our close_notify, twice
        # (the same datagram again halfway through the grace).
        goodbyes = []
        with trio.move_on_after(0.5):
            while True:
                goodbyes.append(await sock.recv(65536))
        assert len(goodbyes) == 2 and goodbyes[0] == goodbyes[1]
        sock.close()
