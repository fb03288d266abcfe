"""DTLS 1.2 interop: the openssl CLI (system OpenSSL 3.0) and trio's own DTLSEndpoint.

Every peer here is a second DTLS implementation: ``openssl s_client -dtls1_2``
and ``s_server -dtls1_2`` run on the system's OpenSSL 3.0, and trio's
``DTLSEndpoint`` drives pyOpenSSL its own way. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import pytest
import trio
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server
from tests.tls.test_interop import (
    OPENSSL,
    STEP_TIMEOUT,
    client_cert_args,
    openssl_process,
    s_client_args,
    s_server,
    unique_line,
)
from trio_tls_dtls import HandshakeError, open_dtls_channel

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command-line tool")


async def test_s_client_dtls_echo(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        args = s_client_args(port_of(server), pki, "-dtls1_2")
        async with openssl_process(*args) as client:
            line = unique_line()
            await client.send(line)
            await client.wait_for(line)
            await client.close_stdin()
            assert await client.wait_exit() == 0, client.transcript()
    assert server.stats.handshakes_ok == 1
    assert "Verify return code: 0 (ok)" in client.out, client.transcript()


async def test_s_client_dtls_mutual_tls(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.mtls_server_settings()) as server:
        args = s_client_args(port_of(server), pki, "-dtls1_2", *client_cert_args(pki))
        async with openssl_process(*args) as client:
            line = unique_line()
            await client.send(line)
            await client.wait_for(line)
            await client.close_stdin()
            assert await client.wait_exit() == 0, client.transcript()
    assert server.stats.handshakes_ok == 1


async def test_s_client_dtls_without_certificate_is_refused(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.mtls_server_settings()) as server:
        args = s_client_args(port_of(server), pki, "-dtls1_2")
        async with openssl_process(*args) as client:
            await client.send(unique_line())
            status = await client.wait_exit()
        assert status != 0, client.transcript()
        with trio.fail_after(STEP_TIMEOUT):
            while not server.stats.handshakes_failed:
                await trio.sleep(0.01)
    assert server.stats.handshakes_ok == 0
    assert "peer did not return a certificate" in str(server.stats.handshakes_failed)


@pytest.mark.parametrize("mutual", [False, True])
async def test_client_against_s_server_dtls(pki: PKIFiles, mutual: bool) -> None:
    extra = ["-dtls1_2"]
    if mutual:
        extra += ["-Verify", "1", "-CAfile", str(pki.ca), "-verify_return_error"]
    async with s_server(pki, *extra, reverse=False) as (server, port):
        settings = pki.client_settings(with_cert=mutual)
        channel = await open_dtls_channel(
            "127.0.0.1", port, settings=settings, server_hostname="localhost"
        )
        assert channel.info.protocol == "DTLSv1.2"
        line = unique_line()
        await channel.send(line)
        await server.wait_for(line)  # s_server prints what it received
        reply = unique_line()
        await server.send(reply)  # and sends its stdin to us
        with trio.fail_after(STEP_TIMEOUT):
            assert await channel.receive() == reply
        await channel.aclose()
    if mutual:
        assert "trio-tlsd client" in server.err, server.transcript()


async def test_client_refuses_s_server_with_wrong_name(pki: PKIFiles) -> None:
    async with s_server(pki, "-dtls1_2", reverse=False) as (_, port):
        settings = pki.client_settings(handshake_timeout=5.0)
        with pytest.raises(HandshakeError, match="certificate verify failed"):
            await open_dtls_channel("127.0.0.1", port, settings=settings, server_hostname="other")


def trio_client_context(pki: PKIFiles) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.load_verify_locations(str(pki.ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    return ctx


async def test_trio_dtls_endpoint_client_against_our_server(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        for n in range(2):  # trio's connect mutates its Context: a fresh one each time
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                endpoint = trio.DTLSEndpoint(sock)
                channel = endpoint.connect(("127.0.0.1", port_of(server)), trio_client_context(pki))
                with trio.fail_after(STEP_TIMEOUT):
                    await channel.do_handshake()
                    await channel.send(b"from trio %d" % n)
                    assert await channel.receive() == b"from trio %d" % n
                channel.close()
                endpoint.close()
    assert server.stats.handshakes_ok == 2


async def test_our_client_against_trio_dtls_endpoint_server(pki: PKIFiles) -> None:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate_chain_file(str(pki.server_cert))
    ctx.use_privatekey_file(str(pki.server_key))

    async def echo(channel: trio.DTLSChannel) -> None:
        try:
            await channel.do_handshake()
            async for message in channel:
                await channel.send(message)
        except (trio.BrokenResourceError, SSL.Error):
            pass  # trio 0.35 raises SSL.ZeroReturnError at the peer's close_notify

    settings = pki.client_settings()
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        endpoint = trio.DTLSEndpoint(sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve, ctx, echo)
            for n in range(3):  # one ClientSettings, several connections
                channel = await open_dtls_channel(
                    "127.0.0.1", port, settings=settings, server_hostname="localhost"
                )
                await channel.send(b"to trio %d" % n)
                with trio.fail_after(STEP_TIMEOUT):
                    assert await channel.receive() == b"to trio %d" % n
                await channel.aclose()
            nursery.cancel_scope.cancel()
        endpoint.close()


async def test_one_client_settings_for_many_concurrent_connections(pki: PKIFiles) -> None:
    settings = pki.client_settings()
    async with running_dtls_server(pki.server_settings()) as server:

        async def one(n: int) -> None:
            channel = await open_dtls_channel("127.0.0.1", port_of(server), settings=settings)
            await channel.send(b"%d" % n)
            assert await channel.receive() == b"%d" % n
            await channel.aclose()

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(one, n)
    assert server.stats.handshakes_ok == 8
