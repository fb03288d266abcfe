"""The service: TLS and DTLS side by side in one nursery, on one port number."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from tests.conftest import PKIFiles
from trio_tls_dtls import (
    CertificateSettings,
    ConfigError,
    PeerInfo,
    ServerSettings,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.drivers.dtls.channel import DTLSChannel
from trio_tls_dtls.drivers.tls.stream import TLSStream
from trio_tls_dtls.service.service import Service, serve


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


async def test_drain_sends_close_notify_and_waits_for_handlers(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(serve, pki.server_settings(), 0, host="127.0.0.1")
        )
        settings = pki.client_settings()
        stream = await open_tls_stream("127.0.0.1", service.port, settings=settings)
        channel = await open_dtls_channel("127.0.0.1", service.port, settings=settings)
        await stream.send_all(b"before")
        assert await stream.receive_some() == b"before"
        await channel.send(b"before")
        assert await channel.receive() == b"before"
        assert service.open_count() == 2
        drained = trio.Event()

        async def drain() -> None:
            await service.drain()
            drained.set()

        nursery.start_soon(drain)
        # Each client sees the server's close_notify, and closes in turn.
        with trio.fail_after(5):
            assert await stream.receive_some() == b""
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
        assert not drained.is_set()  # the handlers are still waiting for us
        await stream.aclose()
        await channel.aclose()
        with trio.fail_after(5):
            await drained.wait()
        assert service.open_count() == 0
        # No new connections once draining.
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", service.port)
        nursery.cancel_scope.cancel()


async def test_drain_is_bounded_by_the_caller(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(serve, pki.server_settings(), 0, host="127.0.0.1", dtls=False)
        )
        stream = await open_tls_stream("127.0.0.1", service.port, settings=pki.client_settings())
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        with trio.move_on_after(0.5) as scope:
            await service.drain()  # our client never closes: only the deadline ends this
        assert scope.cancelled_caught
        assert service.open_count() == 1
        nursery.cancel_scope.cancel()
    assert service.open_count() == 0
    await stream.aclose()


async def test_reload_swaps_the_certificate_for_new_handshakes_only(
    pki: PKIFiles, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    settings = ServerSettings(certificate=CertificateSettings(cert, key))
    client = pki.client_settings()
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(partial(serve, settings, 0, host="127.0.0.1"))
        old = await open_tls_stream("127.0.0.1", service.port, settings=client)
        first = old.info.certificate
        assert first is not None

        fresh = pki.pki.issue_server()
        cert.write_bytes(fresh.cert_pem)
        key.write_bytes(fresh.key_pem)
        assert service.reload()
        # A client with no session to resume (the ticket keys survive a
        # reload, so the first client's would resume, with no certificate).
        client = pki.client_settings()
        new = await open_tls_stream("127.0.0.1", service.port, settings=client)
        channel = await open_dtls_channel("127.0.0.1", service.port, settings=client)
        for peer in (new.info, channel.info):
            assert peer.certificate is not None
            assert peer.certificate.serial_number == fresh.cert.serial_number
        # The established connection is untouched.
        await old.send_all(b"still here")
        assert await old.receive_some() == b"still here"

        cert.write_text("not a certificate\n")  # a bad reload keeps what works
        assert not service.reload()
        again = await open_tls_stream("127.0.0.1", service.port, settings=pki.client_settings())
        assert again.info.certificate is not None
        assert again.info.certificate.serial_number == fresh.cert.serial_number
        assert (service.reloads, service.reloads_failed) == (1, 1)
        for closable in (old, new, again, channel):
            await closable.aclose()
        nursery.cancel_scope.cancel()
