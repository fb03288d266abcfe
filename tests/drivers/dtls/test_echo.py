"""serve_dtls and open_dtls_channel against each other on loopback."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server
from trio_tls_dtls.drivers.dtls.client import open_dtls_channel


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_echo_ipv4_and_ipv6(pki: PKIFiles, host: str) -> None:
    async with running_dtls_server(pki.server_settings(), host=host) as server:
        channel = await open_dtls_channel(
            host, port_of(server), settings=pki.client_settings(), server_hostname="localhost"
        )
        async with channel:
            for i in range(5):
                await channel.send(b"hello %d" % i)
                assert await channel.receive() == b"hello %d" % i
            assert channel.info.protocol == "DTLSv1.2"
        with trio.fail_after(5):
            while server.stats.peers_active:
                await trio.sleep(0.01)
    assert server.stats.cookies_sent == 1
    assert server.stats.cookies_verified == 1
    assert server.stats.handshakes_ok == 1
    assert server.stats.peers_total == 1
