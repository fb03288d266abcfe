"""DTLS 1.2 interop with third-party peers: the ``openssl`` CLI and ``trio.DTLSEndpoint``.

Every peer here is a second DTLS implementation agreeing (or refusing) on the
wire with ours. ``openssl s_client``/``s_server -dtls1_2`` run on the system's
OpenSSL 3.0 (we run on the OpenSSL 4.0 inside the ``cryptography`` wheel), and
trio's ``DTLSEndpoint`` drives pyOpenSSL with its own record layer, cookie
exchange and retransmission. Everything is on 127.0.0.1.

1. ``s_client -dtls1_2`` against ``serve_dtls`` (echo handler): its ClientHello
   passes our stateless cookie gate and the line it sends comes back; our
   mutual-TLS server accepts it with the right certificate, refuses it
   without one or with an untrusted one, and keeps serving afterwards.
2. ``open_dtls_channel`` against ``s_server -dtls1_2``: a line each way
   (s_server prints what it receives and sends its stdin; it has no ``-rev``
   for DTLS) and our close_notify ends its session; ``-Verify`` sees our
   client certificate and refuses us without one (or with an untrusted one);
   our client refuses a wrong host name and an untrusted CA, with an alert.

   The echo tests of 1 and 2 also run with RSA certificates at a 512-byte
   MTU, where both sides must fragment handshake messages across datagrams
   and reassemble the other's fragments.
3. ``trio.DTLSEndpoint`` in both directions, plain and mutual TLS: its client
   against ``serve_dtls``, and our client against ``DTLSEndpoint.serve``.
   ``DTLSEndpoint.connect`` sets options on the Context it is given, which
   pyOpenSSL 25+ forbids once the Context has made a Connection, so each
   ``connect`` here gets a fresh Context.
4. One ``ClientSettings`` object for many consecutive and concurrent
   ``open_dtls_channel`` connections, against both servers: its Context is
   built once and only read, so none of them fails the way reusing a Context
   with ``DTLSEndpoint.connect`` does.

The openssl processes come from :mod:`tests.openssl` (killed by PID, every wait
bounded by a deadline and woken by real output). Waits on our server's
counters poll the counter under a deadline: nothing here sleeps and hopes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from tests import openssl
from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server
from tests.openssl import (
    CLIENT_SUBJECT,
    OPENSSL_MARKS,
    STEP_TIMEOUT,
    OpenSSLProcess,
    RecordingEcho,
    assert_s_client_report,
    server_tasks_settled,
    unique_line,
)
from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    DTLSChannel,
    DTLSServer,
    HandshakeError,
    dtls_echo_handler,
    open_dtls_channel,
)

pytestmark = [*OPENSSL_MARKS, pytest.mark.timeout(30)]

SERVER_SUBJECT = "CN=localhost,O=trio-tlsd development"
# trio's initial handshake retransmit timer, shortened where a test waits for
# its retransmissions (the default is 1 s).
TRIO_RETRANSMIT = 0.1

# (PKI fixture, mutual TLS, MTU) for the echo tests against openssl. The last
# has an RSA chain larger than the MTU: both sides must fragment handshake
# messages across datagrams, and reassemble the other's.
VARIANTS = [("pki", False, None), ("pki", True, None), ("rsa_pki", True, 512)]
VARIANT_IDS = ["plain", "mutual", "mutual-rsa-mtu512"]


async def eventually(check: Callable[[], bool], what: str, limit: float = STEP_TIMEOUT) -> None:
    """Wait until *check()* holds, polling it; fail after *limit* seconds.

    For our server's counters, which have no event to wait on.
    """
    with trio.move_on_after(limit):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"no {what} within {limit:g}s")


async def echo_datagrams(channel: DTLSChannel, count: int = 3) -> None:
    """Send *count* distinct datagrams through our channel; each must come back as sent."""
    for _ in range(count):
        datagram = unique_line()
        await channel.send(datagram)
        with trio.fail_after(STEP_TIMEOUT):
            assert await channel.receive() == datagram


def mtu_options(pki: PKIFiles, mtu: int | None) -> dict[str, int]:
    """Our settings' options for *mtu* (None: the default MTU).

    Checks that the certificates cannot travel in one datagram of *mtu*
    bytes, so the handshake is fragmented.
    """
    if mtu is None:
        return {}
    for issued in (pki.pki.server, pki.pki.client):
        assert len(issued.cert.public_bytes(Encoding.DER)) > mtu
    return {"mtu": mtu}


def mtu_args(mtu: int | None) -> list[str]:
    """The same MTU for s_client or s_server."""
    return [] if mtu is None else ["-mtu", str(mtu)]


def dtls_s_client_args(server: DTLSServer, pki: PKIFiles, *extra: str) -> list[str]:
    return openssl.s_client_args(port_of(server), pki, "-dtls1_2", *extra)


# -- 1. openssl s_client against serve_dtls ----------------------------------------


@pytest.mark.parametrize(("pki_name", "mutual", "mtu"), VARIANTS, ids=VARIANT_IDS)
async def test_s_client_echo(
    request: pytest.FixtureRequest, pki_name: str, mutual: bool, mtu: int | None
) -> None:
    pki: PKIFiles = request.getfixturevalue(pki_name)
    handler = RecordingEcho(dtls_echo_handler)
    options = mtu_options(pki, mtu)
    settings = pki.mtls_server_settings(**options) if mutual else pki.server_settings(**options)
    async with running_dtls_server(settings, handler) as server:
        extra = [*(openssl.client_cert_args(pki) if mutual else []), *mtu_args(mtu)]
        async with openssl.openssl_process(*dtls_s_client_args(server, pki, *extra)) as client:
            report = await openssl.s_client_echo_session(client)
        # s_client sent close_notify as it exited: the peer is gone.
        await server_tasks_settled()
        assert server.stats.peers_active == 0
    assert_s_client_report(report, "1.2", dtls=True)
    assert "Verification: OK" in report
    [peer] = handler.peers
    assert peer.protocol == "DTLSv1.2"
    assert peer.transport == "dtls"
    assert peer.server_name == "localhost"
    assert peer.subject == (CLIENT_SUBJECT if mutual else None)
    # s_client answered our HelloVerifyRequest with a ClientHello carrying the
    # cookie. (Only a stall past s_client's 1 s retransmit timer would make us
    # send a second HelloVerifyRequest; one peer is admitted either way.)
    assert server.stats.cookies_sent >= 1
    assert server.stats.cookies_verified == 1
    assert server.stats.peers_total == 1
    assert server.stats.handshakes_ok == 1
    assert not server.stats.handshakes_failed
    assert not server.stats.dropped


@pytest.mark.parametrize(
    ("certificate", "client_error", "server_reason"),
    [
        (None, "alert handshake failure", "peer did not return a certificate"),
        (
            "other_pki",
            "alert unknown ca",
            "certificate verify failed (unable to get local issuer certificate)",
        ),
    ],
    ids=["no-certificate", "untrusted-certificate"],
)
async def test_s_client_refused_by_mutual_tls_server(
    request: pytest.FixtureRequest,
    pki: PKIFiles,
    certificate: str | None,
    client_error: str,
    server_reason: str,
) -> None:
    handler = RecordingEcho(dtls_echo_handler)
    async with running_dtls_server(pki.mtls_server_settings(), handler) as server:
        cert_args = [] if certificate is None else cert_args_of(request, certificate)
        async with openssl.openssl_process(*dtls_s_client_args(server, pki, *cert_args)) as client:
            # stdin stays open: s_client may only exit because of the server.
            status = await client.wait_exit()
            assert status != 0, client.transcript()
            assert client_error in client.err, client.transcript()
        await server_tasks_settled()
        assert server.stats.handshakes_failed == {server_reason: 1}
        assert server.stats.handshakes_ok == 0
        assert server.stats.peers_active == 0
        # The server is still up for a client that does present a good certificate.
        args = dtls_s_client_args(server, pki, *openssl.client_cert_args(pki))
        async with openssl.openssl_process(*args) as client:
            await openssl.s_client_echo_session(client)
    assert [p.subject for p in handler.peers] == [CLIENT_SUBJECT]
    assert server.stats.handshakes_ok == 1


def cert_args_of(request: pytest.FixtureRequest, pki_name: str) -> list[str]:
    """s_client options presenting the client certificate of the PKI fixture *pki_name*."""
    files: PKIFiles = request.getfixturevalue(pki_name)
    return openssl.client_cert_args(files)


# -- 2. open_dtls_channel against openssl s_server -----------------------------------


@asynccontextmanager
async def dtls_s_server(pki: PKIFiles, *extra: str) -> AsyncIterator[tuple[OpenSSLProcess, int]]:
    """``s_server -dtls1_2`` for one session, printing what it receives, sending its stdin."""
    async with openssl.s_server(pki, "-dtls1_2", *extra, reverse=False) as (server, port):
        yield server, port


@pytest.mark.parametrize(("pki_name", "mutual", "mtu"), VARIANTS, ids=VARIANT_IDS)
async def test_client_against_s_server(
    request: pytest.FixtureRequest, pki_name: str, mutual: bool, mtu: int | None
) -> None:
    pki: PKIFiles = request.getfixturevalue(pki_name)
    extra = [*(openssl.s_server_verify_args(pki) if mutual else []), *mtu_args(mtu)]
    async with dtls_s_server(pki, *extra) as (server, port):
        settings = pki.client_settings(with_cert=mutual, **mtu_options(pki, mtu))
        channel = await open_dtls_channel(
            "127.0.0.1", port, settings=settings, server_hostname="localhost"
        )
        assert channel.info.protocol == "DTLSv1.2"
        assert channel.info.subject == SERVER_SUBJECT
        # Ours to s_server: it prints the datagram.
        line = unique_line()
        await channel.send(line)
        await server.wait_for(line)
        # s_server to ours: a line written to its stdin goes out as one datagram.
        reply = unique_line()
        await server.send(reply)
        with trio.fail_after(STEP_TIMEOUT):
            assert await channel.receive() == reply
        await channel.aclose()
        # s_server prints DONE when it reads our close_notify, then (-naccept 1) exits.
        assert await server.wait_exit() == 0, server.transcript()
    assert "DONE" in server.out, server.transcript()
    saw_client = "subject=O = trio-tlsd development, CN = trio-tlsd client" in server.out
    assert saw_client == mutual, server.transcript()


def settings_with_certificate_of(pki: PKIFiles, issuer: PKIFiles) -> ClientSettings:
    """Trusts *pki*'s CA; presents a client certificate issued by *issuer*'s CA."""
    certificate = CertificateSettings(issuer.client_cert, issuer.client_key)
    return pki.client_settings(certificate=certificate, handshake_timeout=STEP_TIMEOUT)


@pytest.mark.parametrize(
    ("certificate", "our_error", "s_server_error"),
    [
        (None, "alert handshake failure", "peer did not return a certificate"),
        ("other_pki", "alert unknown ca", "unable to get local issuer certificate"),
    ],
    ids=["no-certificate", "untrusted-certificate"],
)
async def test_client_refused_by_s_server(
    request: pytest.FixtureRequest,
    pki: PKIFiles,
    certificate: str | None,
    our_error: str,
    s_server_error: str,
) -> None:
    if certificate is None:
        settings = pki.client_settings(handshake_timeout=STEP_TIMEOUT)
    else:
        settings = settings_with_certificate_of(pki, request.getfixturevalue(certificate))
    async with dtls_s_server(pki, *openssl.s_server_verify_args(pki)) as (server, port):
        with pytest.raises(HandshakeError, match=our_error):
            await open_dtls_channel(
                "127.0.0.1", port, settings=settings, server_hostname="localhost"
            )
        assert await server.wait_exit() == 0, server.transcript()
    assert s_server_error in server.err, server.transcript()


@pytest.mark.parametrize(
    ("trusted", "server_hostname", "our_error", "alert_s_server_got"),
    [
        (
            "pki",
            "other.example",
            r"certificate verify failed \(hostname mismatch\)",
            "bad certificate",
        ),
        (
            "other_pki",
            "localhost",
            r"certificate verify failed \(unable to get local",
            "unknown ca",
        ),
    ],
    ids=["wrong-host-name", "untrusted-ca"],
)
async def test_client_refuses_s_server(
    request: pytest.FixtureRequest,
    pki: PKIFiles,
    trusted: str,
    server_hostname: str,
    our_error: str,
    alert_s_server_got: str,
) -> None:
    trusted_pki: PKIFiles = request.getfixturevalue(trusted)
    settings = trusted_pki.client_settings(handshake_timeout=STEP_TIMEOUT)
    async with dtls_s_server(pki) as (server, port):
        with pytest.raises(HandshakeError, match=our_error):
            await open_dtls_channel(
                "127.0.0.1", port, settings=settings, server_hostname=server_hostname
            )
        # We told s_server why, with an alert, rather than just going quiet.
        await server.wait_for(f"alert {alert_s_server_got}".encode(), stderr=True)
        assert await server.wait_exit() == 0, server.transcript()
    assert "CIPHER is" not in server.out, server.transcript()


# -- 3. trio.DTLSEndpoint, both directions ---------------------------------------------


def trio_context(pki: PKIFiles, *, with_cert: bool = False) -> SSL.Context:
    """A fresh client Context for one ``DTLSEndpoint.connect`` (it mutates it)."""
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.load_verify_locations(str(pki.ca))
    ctx.set_verify(SSL.VERIFY_PEER)
    if with_cert:
        ctx.use_certificate_chain_file(str(pki.client_cert))
        ctx.use_privatekey_file(str(pki.client_key))
    return ctx


@asynccontextmanager
async def trio_endpoint() -> AsyncIterator[trio.DTLSEndpoint]:
    """A ``trio.DTLSEndpoint`` on an ephemeral 127.0.0.1 port, closed on exit."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        with trio.DTLSEndpoint(sock) as endpoint:
            yield endpoint


async def trio_echo_datagrams(channel: trio.DTLSChannel, count: int = 3) -> None:
    for _ in range(count):
        datagram = unique_line()
        await channel.send(datagram)
        assert await channel.receive() == datagram


@pytest.mark.parametrize("mutual", [False, True], ids=["plain", "mutual"])
async def test_trio_client_against_serve_dtls(pki: PKIFiles, mutual: bool) -> None:
    handler = RecordingEcho(dtls_echo_handler)
    settings = pki.mtls_server_settings() if mutual else pki.server_settings()
    async with running_dtls_server(settings, handler) as server, trio_endpoint() as endpoint:
        for _ in range(2):
            context = trio_context(pki, with_cert=mutual)
            with endpoint.connect(("127.0.0.1", port_of(server)), context) as channel:
                with trio.fail_after(STEP_TIMEOUT):
                    await channel.do_handshake()
                    await trio_echo_datagrams(channel)
    assert [p.protocol for p in handler.peers] == ["DTLSv1.2"] * 2
    assert [p.subject for p in handler.peers] == [CLIENT_SUBJECT if mutual else None] * 2
    assert server.stats.handshakes_ok == 2
    # trio sends no close_notify and reconnects from the same port: the second
    # (cookie-verified) handshake replaces the first association.
    assert server.stats.peers_replaced == 1
    assert not server.stats.handshakes_failed


async def test_trio_client_without_certificate_refused_by_serve_dtls(pki: PKIFiles) -> None:
    async with (
        running_dtls_server(pki.mtls_server_settings()) as server,
        trio_endpoint() as endpoint,
    ):
        channel = endpoint.connect(("127.0.0.1", port_of(server)), trio_context(pki))
        completed = False

        async def handshake() -> None:
            nonlocal completed
            await channel.do_handshake(initial_retransmit_timeout=TRIO_RETRANSMIT)
            completed = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake)
            await eventually(lambda: bool(server.stats.handshakes_failed), "refused handshake")
            # trio ignores the fatal alert (it drops every SSL.Error in its
            # handshake loop) and retransmits its final flight. The retransmission
            # reaches a server that has forgotten the peer and must not revive it.
            await eventually(lambda: sum(server.stats.dropped.values()) > 0, "dropped retransmit")
            nursery.cancel_scope.cancel()
    assert not completed
    assert server.stats.handshakes_failed == {"peer did not return a certificate": 1}
    assert server.stats.handshakes_ok == 0
    assert server.stats.peers_total == 1
    assert server.stats.peers_active == 0


class TrioEchoServer:
    """``trio.DTLSEndpoint.serve`` with an echo handler: trio's own DTLS server.

    Records the subject of each client certificate it verified, and each
    session that ended with the client's close_notify (trio reports that as
    ``SSL.ZeroReturnError`` from ``receive``).
    """

    def __init__(self, endpoint: trio.DTLSEndpoint) -> None:
        self.endpoint = endpoint
        self.port: int = endpoint.socket.getsockname()[1]
        self.client_subjects: list[str] = []
        self._send_closed, self._closed = trio.open_memory_channel[None](math.inf)

    def context(self, pki: PKIFiles, *, require_client_cert: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate_chain_file(str(pki.server_cert))
        ctx.use_privatekey_file(str(pki.server_key))
        if require_client_cert:
            ctx.load_verify_locations(str(pki.ca))
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verified)
        return ctx

    def _verified(
        self, conn: SSL.Connection, cert: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        if ok and depth == 0:
            self.client_subjects.append(cert.to_cryptography().subject.rfc4514_string())
        return bool(ok)

    async def echo(self, channel: trio.DTLSChannel) -> None:
        try:
            async for datagram in channel:
                await channel.send(datagram)
        except SSL.ZeroReturnError:
            self._send_closed.send_nowait(None)

    async def wait_closed_by_clients(self, count: int) -> None:
        """Wait until *count* more sessions have ended with the client's close_notify."""
        with trio.fail_after(STEP_TIMEOUT):
            for _ in range(count):
                await self._closed.receive()


@asynccontextmanager
async def running_trio_server(
    pki: PKIFiles, *, require_client_cert: bool = False
) -> AsyncIterator[TrioEchoServer]:
    async with trio_endpoint() as endpoint, trio.open_nursery() as nursery:
        server = TrioEchoServer(endpoint)
        context = server.context(pki, require_client_cert=require_client_cert)
        await nursery.start(endpoint.serve, context, server.echo)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("mutual", [False, True], ids=["plain", "mutual"])
async def test_client_against_trio_server(pki: PKIFiles, mutual: bool) -> None:
    async with running_trio_server(pki, require_client_cert=mutual) as server:
        settings = pki.client_settings(with_cert=mutual)
        channel = await open_dtls_channel(
            "127.0.0.1", server.port, settings=settings, server_hostname="localhost"
        )
        assert channel.info.protocol == "DTLSv1.2"
        assert channel.info.subject == SERVER_SUBJECT
        await echo_datagrams(channel)
        await channel.aclose()
        await server.wait_closed_by_clients(1)
    assert server.client_subjects == ([CLIENT_SUBJECT] if mutual else [])


async def test_client_without_certificate_refused_by_trio_server(pki: PKIFiles) -> None:
    async with running_trio_server(pki, require_client_cert=True) as server:
        settings = pki.client_settings(handshake_timeout=STEP_TIMEOUT)
        with pytest.raises(HandshakeError, match="alert handshake failure"):
            await open_dtls_channel(
                "127.0.0.1", server.port, settings=settings, server_hostname="localhost"
            )
    assert server.client_subjects == []


# -- 4. one ClientSettings, many connections -------------------------------------------

CONSECUTIVE = 3
CONCURRENT = 8


async def connect_echo_close(
    port: int, settings: ClientSettings, results: list[str], resume: bool = True
) -> None:
    channel = await open_dtls_channel(
        "127.0.0.1", port, settings=settings, server_hostname="localhost", resume=resume
    )
    await echo_datagrams(channel, 2)
    await channel.aclose()
    assert channel.info.subject is not None
    results.append(channel.info.subject)


async def many_connections(
    port: int, settings: ClientSettings, *, resume: bool = True
) -> list[str]:
    """CONSECUTIVE connections one after another, then CONCURRENT at once, all with *settings*."""
    results: list[str] = []
    for _ in range(CONSECUTIVE):
        await connect_echo_close(port, settings, results, resume)
    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENT):
            nursery.start_soon(connect_echo_close, port, settings, results, resume)
    return results


async def test_one_client_settings_against_serve_dtls(pki: PKIFiles) -> None:
    settings = pki.client_settings()
    handler = RecordingEcho(dtls_echo_handler)
    async with running_dtls_server(pki.server_settings(), handler) as server:
        subjects = await many_connections(port_of(server), settings)
        await eventually(lambda: server.stats.peers_active == 0, "every peer closed")
    assert subjects == [SERVER_SUBJECT] * (CONSECUTIVE + CONCURRENT)
    assert server.stats.handshakes_ok == CONSECUTIVE + CONCURRENT
    assert len(handler.peers) == CONSECUTIVE + CONCURRENT
    assert not server.stats.handshakes_failed


async def test_one_client_settings_against_trio_server(pki: PKIFiles) -> None:
    settings = pki.client_settings(with_cert=True)
    async with running_trio_server(pki, require_client_cert=True) as server:
        # Full handshakes: each one must verify our certificate. (A resumption
        # attempt would also crash trio's endpoint: a context that verifies
        # clients needs a session ID context, which this one, like trio's
        # examples, does not set; OpenSSL fails the handshake and
        # DTLSEndpoint.serve lets that error out of its nursery.)
        subjects = await many_connections(server.port, settings, resume=False)
        await server.wait_closed_by_clients(CONSECUTIVE + CONCURRENT)
    assert subjects == [SERVER_SUBJECT] * (CONSECUTIVE + CONCURRENT)
    assert server.client_subjects == [CLIENT_SUBJECT] * (CONSECUTIVE + CONCURRENT)
