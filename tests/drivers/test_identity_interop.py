"""Strict ALPN, client identity rules and CRLs on the wire: openssl s_client and our client.

Each refusal must reach the client as an alert during the handshake (in
TLS 1.3 the client has sent its Finished before the server judges its
certificate, so the alert arrives with its first read), and the server must
count the failure under our reason: that reason is the access log's
``handshake_error``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, receive_exactly, running_dtls_server, running_tls_server
from tests.identity_certs import issue_client_cert, write_crl
from tests.openssl import (
    OPENSSL_MARKS,
    STEP_TIMEOUT,
    RecordingEcho,
    openssl_process,
    s_client_args,
    s_client_echo_session,
    server_tasks_settled,
)
from trio_tls_dtls import (
    CertificateSettings,
    HandshakeError,
    TLSError,
    dtls_echo_handler,
    open_tls_stream,
)

pytestmark = [*OPENSSL_MARKS, pytest.mark.timeout(30)]

SPIFFE_WEB = "spiffe://prod.example.org/ns/web/sa/api"
SPIFFE_BATCH = "spiffe://prod.example.org/ns/batch/sa/report"
WEB_ONLY = "spiffe://prod.example.org/ns/web/*"


def cert_args(cert: CertificateSettings) -> list[str]:
    return ["-cert", str(cert.cert_file), "-key", str(cert.key_file)]


# -- ALPN as RFC 7301 says ----------------------------------------------------------------


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
async def test_s_client_without_a_common_protocol_gets_no_application_protocol(
    pki: PKIFiles, dtls: bool
) -> None:
    settings = pki.server_settings(alpn=("echo/1",))
    running = (
        running_dtls_server(settings, dtls_echo_handler) if dtls else running_tls_server(settings)
    )
    async with running as server:
        extra = ["-dtls1_2"] if dtls else []
        args = s_client_args(port_of(server), pki, *extra, "-alpn", "h2,http/1.1")
        async with openssl_process(*args) as client:
            assert await client.wait_exit() != 0, client.transcript()
            assert "alert no application protocol" in client.err, client.transcript()
        await server_tasks_settled()
        assert server.stats.handshakes_failed == {
            "no application protocol in common (ALPN): client offered 'h2','http/1.1', "
            "server has echo/1": 1
        }
        # A client with a protocol in common, and one with no ALPN at all, still get in.
        for alpn in (["-alpn", "h2,echo/1"], []):
            async with openssl_process(*s_client_args(port_of(server), pki, *extra, *alpn)) as ok:
                report = await s_client_echo_session(ok)
            assert ("ALPN protocol: echo/1" in report) == bool(alpn), report


async def test_our_client_without_a_common_protocol(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(alpn=("echo/1",))) as server:
        settings = pki.client_settings(alpn=("h2",), max_version="1.2")
        with pytest.raises(HandshakeError, match="alert no application protocol"):
            await open_tls_stream("127.0.0.1", port_of(server), settings=settings)


# -- client identity rules ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_client_identity_rules(pki: PKIFiles, version: str) -> None:
    _, web = issue_client_cert(pki, "web", uris=[SPIFFE_WEB])
    _, batch = issue_client_cert(pki, "batch", uris=[SPIFFE_BATCH])
    handler = RecordingEcho()
    settings = pki.mtls_server_settings(allow_client_sans=[WEB_ONLY])
    flag = "-tls1_2" if version == "1.2" else "-tls1_3"
    async with running_tls_server(settings, handler) as server:
        args = s_client_args(port_of(server), pki, flag, *cert_args(batch))
        async with openssl_process(*args) as client:
            # stdin stays open: s_client may only exit because of the server.
            assert await client.wait_exit() != 0, client.transcript()
            assert "alert handshake failure" in client.err, client.transcript()
        await server_tasks_settled()
        [(reason, count)] = server.stats.handshakes_failed.items()
        assert count == 1
        assert reason.startswith(
            "client certificate not allowed: subject 'CN=batch,O=test clients', "
            f"SANs [URI:{SPIFFE_BATCH}]"
        ), reason
        args = s_client_args(port_of(server), pki, flag, *cert_args(web))
        async with openssl_process(*args) as client:
            await s_client_echo_session(client)
    [peer] = handler.peers
    assert peer.subject == "CN=web,O=test clients"


async def test_our_client_refused_by_identity_rules(pki: PKIFiles) -> None:
    _, batch = issue_client_cert(pki, "batch", uris=[SPIFFE_BATCH])
    settings = pki.mtls_server_settings(allow_client_sans=[WEB_ONLY])
    async with running_tls_server(settings) as server:
        client = pki.client_settings(certificate=batch, max_version="1.2")
        with pytest.raises(HandshakeError, match="tls alert handshake failure"):
            await open_tls_stream("127.0.0.1", port_of(server), settings=client)
        # TLS 1.3: our side of the handshake ends before the server's verdict,
        # which comes as an alert on the first read.
        client = pki.client_settings(certificate=batch, min_version="1.3")
        stream = await open_tls_stream("127.0.0.1", port_of(server), settings=client)
        with trio.fail_after(STEP_TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
            await receive_exactly(stream, 1)
        assert isinstance(info.value.__cause__, TLSError)
        assert info.value.__cause__.reason == "tls alert handshake failure"
        await stream.aclose()


# -- CRLs ------------------------------------------------------------------------------------


async def test_s_client_with_a_revoked_certificate(pki: PKIFiles, tmp_path: Path) -> None:
    revoked_cert, revoked = issue_client_cert(pki, "revoked")
    _, good = issue_client_cert(pki, "good")
    crl = write_crl(pki, tmp_path / "ca.crl", [revoked_cert])
    handler = RecordingEcho(dtls_echo_handler)
    async with running_dtls_server(pki.mtls_server_settings(crl_file=crl), handler) as server:
        args = s_client_args(port_of(server), pki, "-dtls1_2", *cert_args(revoked))
        async with openssl_process(*args) as client:
            assert await client.wait_exit() != 0, client.transcript()
            assert "alert certificate revoked" in client.err, client.transcript()
        await server_tasks_settled()
        assert server.stats.handshakes_failed == {
            "certificate verify failed (certificate revoked)": 1
        }
        args = s_client_args(port_of(server), pki, "-dtls1_2", *cert_args(good))
        async with openssl_process(*args) as client:
            await s_client_echo_session(client)
    assert [p.subject for p in handler.peers] == ["CN=good,O=test clients"]
