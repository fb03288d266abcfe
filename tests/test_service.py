"""The service: TLS and DTLS side by side in one nursery, on one port number."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from tests.conftest import PKIFiles
from trio_tls_dtls import ConfigError, PeerInfo, open_dtls_channel, open_tls_stream
from trio_tls_dtls.dtls.channel import DTLSChannel
from trio_tls_dtls.service import Service, serve
from trio_tls_dtls.tls.stream import TLSStream


async def test_both_listeners_share_a_port_and_echo(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(serve, pki.server_settings(), 0, host="127.0.0.1")
        )
        assert [a[1] for a in service.addresses] == [service.port, service.port]
        assert "TLS on tcp 127.0.0.1:" in service.describe()
        assert "DTLS on udp 127.0.0.1:" in service.describe()
        settings = pki.client_settings()
        stream = await open_tls_stream("127.0.0.1", service.port, settings=settings)
        channel = await open_dtls_channel("127.0.0.1", service.port, settings=settings)
        await stream.send_all(b"over tcp")
        await channel.send(b"over udp")
        assert await stream.receive_some() == b"over tcp"
        assert await channel.receive() == b"over udp"
        await stream.aclose()
        await channel.aclose()
        assert service.tls is not None and service.dtls is not None
        assert service.tls.offload is service.dtls.offload  # one crypto thread pool
        nursery.cancel_scope.cancel()
    assert "TLS: 1 connections, 1 handshakes ok" in service.summary()
    assert "DTLS: 1 peers, 1 handshakes ok" in service.summary()


async def test_custom_handlers_see_the_peer(pki: PKIFiles) -> None:
    seen: list[str] = []

    async def tls_handler(stream: TLSStream, peer: PeerInfo) -> None:
        seen.append(f"tls {peer.protocol}")
        await stream.send_all(b"hi tls")

    async def dtls_handler(channel: DTLSChannel, peer: PeerInfo) -> None:
        seen.append(f"dtls {peer.protocol}")
        await channel.send(b"hi dtls")

    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(
                serve,
                pki.server_settings(),
                0,
                host="127.0.0.1",
                tls_handler=tls_handler,
                dtls_handler=dtls_handler,
            )
        )
        settings = pki.client_settings()
        stream = await open_tls_stream("127.0.0.1", service.port, settings=settings)
        assert await stream.receive_some() == b"hi tls"
        channel = await open_dtls_channel("127.0.0.1", service.port, settings=settings)
        assert await channel.receive() == b"hi dtls"
        await stream.aclose()
        await channel.aclose()
        nursery.cancel_scope.cancel()
    assert sorted(seen) == ["dtls DTLSv1.2", "tls TLSv1.3"]


@pytest.mark.parametrize(("tls", "dtls"), [(True, False), (False, True)])
async def test_one_listener_only(pki: PKIFiles, tls: bool, dtls: bool) -> None:
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(serve, pki.server_settings(), 0, host="127.0.0.1", tls=tls, dtls=dtls)
        )
        assert (service.tls is not None, service.dtls is not None) == (tls, dtls)
        assert len(service.addresses) == 1
        nursery.cancel_scope.cancel()


def test_nothing_to_serve(pki: PKIFiles) -> None:
    with pytest.raises(ConfigError, match="nothing to serve"):
        Service(pki.server_settings(), tls=False, dtls=False)
