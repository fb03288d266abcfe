"""OCSP stapling: the server staples the operator's file, our client checks it."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.cli.test_cli import CLI, assert_one_line_error, bound_port, run_cli, serving_without_stop
from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from tests.openssl import OPENSSL, openssl_process, s_client_args
from trio_tls_dtls import (
    CertificateSettings,
    ConfigError,
    HandshakeError,
    ServerSettings,
    Service,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.cli.dev_pki import Issued
from trio_tls_dtls.core.contexts import build_server_context
from trio_tls_dtls.core.ocsp import OCSPState, check_staple, load_staple

NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def make_response(
    cert: x509.Certificate,
    issuer: Issued,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
) -> bytes:
    """A DER OCSP response about *cert*, signed directly by *issuer* (the CA)."""
    this_update = this_update or NOW - HOUR
    next_update = next_update or NOW + 24 * HOUR
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA256(),
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=this_update if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
    )
    response = builder.sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(serialization.Encoding.DER)


def write_staple(folder: Path, der: bytes, name: str = "staple.der") -> Path:
    path = folder / name
    path.write_bytes(der)
    return path


def stapling_settings(pki: PKIFiles, staple: Path) -> ServerSettings:
    cert = CertificateSettings(pki.server_cert, pki.server_key, ocsp_staple_file=staple)
    return ServerSettings(certificate=cert)


def good_staple(pki: PKIFiles) -> bytes:
    return make_response(pki.pki.server.cert, pki.pki.ca)


# -- the checks, without sockets -------------------------------------------------


def test_check_staple_verdicts(pki: PKIFiles, other_pki: PKIFiles) -> None:
    leaf, ca = pki.pki.server.cert, pki.pki.ca
    good = check_staple(good_staple(pki), leaf, ca.cert)
    assert good.state is OCSPState.GOOD and good.next_update is not None
    revoked = make_response(leaf, ca, status=ocsp.OCSPCertStatus.REVOKED)
    assert check_staple(revoked, leaf, ca.cert).state is OCSPState.REVOKED
    unknown = make_response(leaf, ca, status=ocsp.OCSPCertStatus.UNKNOWN)
    assert check_staple(unknown, leaf, ca.cert).state is OCSPState.UNKNOWN
    assert check_staple(b"", leaf, ca.cert).state is OCSPState.MISSING
    assert check_staple(b"not der", leaf, ca.cert).state is OCSPState.INVALID
    stale = make_response(leaf, ca, this_update=NOW - 48 * HOUR, next_update=NOW - HOUR)
    verdict = check_staple(stale, leaf, ca.cert)
    assert verdict.state is OCSPState.INVALID and "expired" in verdict.detail
    future = make_response(leaf, ca, this_update=NOW + 2 * HOUR, next_update=NOW + 48 * HOUR)
    assert "future" in check_staple(future, leaf, ca.cert).detail
    # About another certificate (same CA): not ours.
    other_leaf = pki.pki.issue_server().cert
    verdict = check_staple(make_response(other_leaf, ca), leaf, ca.cert)
    assert verdict.state is OCSPState.INVALID and "does not cover" in verdict.detail
    # Signed by another CA: the signature does not verify against our issuer.
    forged = make_response(leaf, other_pki.pki.ca)
    verdict = check_staple(forged, leaf, ca.cert)
    assert verdict.state is OCSPState.INVALID and "signature" in verdict.detail
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(serialization.Encoding.DER)
    assert "TRY_LATER" in check_staple(unsuccessful, leaf, ca.cert).detail


def test_rsa_issuer_signature_checks(rsa_pki: PKIFiles) -> None:
    leaf, ca = rsa_pki.pki.server.cert, rsa_pki.pki.ca
    assert check_staple(make_response(leaf, ca), leaf, ca.cert).good


def test_load_staple_errors_name_the_path(tmp_path: Path, pki: PKIFiles) -> None:
    leaf = pki.pki.server.cert
    missing = tmp_path / "nope.der"
    with pytest.raises(ConfigError, match=str(missing)):
        load_staple(missing, leaf)
    garbage = write_staple(tmp_path, b"\x30\x03junk", "garbage.der")
    with pytest.raises(ConfigError, match=f"{garbage}.*not a DER OCSP response"):
        load_staple(garbage, leaf)
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    path = write_staple(tmp_path, try_later.public_bytes(serialization.Encoding.DER), "later")
    with pytest.raises(ConfigError, match="TRY_LATER"):
        load_staple(path, leaf)
    assert load_staple(write_staple(tmp_path, b"", "empty.der"), leaf) == b""


def test_load_staple_warns_on_stale_or_foreign(
    tmp_path: Path, pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    leaf, ca = pki.pki.server.cert, pki.pki.ca
    stale = make_response(leaf, ca, this_update=NOW - 48 * HOUR, next_update=NOW - HOUR)
    foreign = make_response(pki.pki.issue_server().cert, ca)
    with caplog.at_level(logging.WARNING, logger="trio_tls_dtls.core.ocsp"):
        assert load_staple(write_staple(tmp_path, stale, "stale.der"), leaf) == stale
        assert load_staple(write_staple(tmp_path, foreign, "foreign.der"), leaf) == foreign
    text = caplog.text
    assert "stale" in text and "does not cover the server certificate" in text


def test_missing_staple_file_fails_the_context_build(tmp_path: Path, pki: PKIFiles) -> None:
    missing = tmp_path / "absent.der"
    with pytest.raises(ConfigError, match=f"OCSP staple file not found: {missing}"):
        build_server_context(stapling_settings(pki, missing))


# -- real handshakes ----------------------------------------------------------------


async def test_client_sees_a_good_staple_over_tls_and_dtls(tmp_path: Path, pki: PKIFiles) -> None:
    settings = stapling_settings(pki, write_staple(tmp_path, good_staple(pki)))
    client = pki.client_settings(require_ocsp=True)
    async with running_tls_server(settings) as server:
        stream = await open_tls_stream(
            "127.0.0.1", port_of(server), settings=client, server_hostname="localhost"
        )
        assert stream.info.ocsp is not None
        assert stream.info.ocsp.state is OCSPState.GOOD, stream.info.ocsp
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.aclose()
    async with running_dtls_server(settings) as dserver:
        channel = await open_dtls_channel(
            "127.0.0.1", port_of(dserver), settings=client, server_hostname="localhost"
        )
        assert channel.info.ocsp is not None and channel.info.ocsp.good
        await channel.aclose()


async def test_revoked_staple_fails_a_requiring_client(tmp_path: Path, pki: PKIFiles) -> None:
    revoked = make_response(pki.pki.server.cert, pki.pki.ca, status=ocsp.OCSPCertStatus.REVOKED)
    settings = stapling_settings(pki, write_staple(tmp_path, revoked))
    async with running_tls_server(settings) as server:
        with pytest.raises(HandshakeError, match="OCSP staple refused: revoked") as caught:
            await open_tls_stream(
                "127.0.0.1",
                port_of(server),
                settings=pki.client_settings(require_ocsp=True),
                server_hostname="localhost",
            )
        assert "revoked" in caught.value.reason
        # Asking without requiring: the handshake succeeds and reports the verdict.
        stream = await open_tls_stream(
            "127.0.0.1",
            port_of(server),
            settings=pki.client_settings(request_ocsp=True),
            server_hostname="localhost",
        )
        assert stream.info.ocsp is not None and stream.info.ocsp.state is OCSPState.REVOKED
        await stream.aclose()


async def test_no_staple(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        port = port_of(server)
        with pytest.raises(HandshakeError, match="OCSP staple refused: missing"):
            await open_tls_stream(
                "127.0.0.1",
                port,
                settings=pki.client_settings(require_ocsp=True),
                server_hostname="localhost",
            )
        stream = await open_tls_stream(
            "127.0.0.1", port, settings=pki.client_settings(), server_hostname="localhost"
        )
        assert stream.info.ocsp is None
        await stream.aclose()
    async with running_dtls_server(pki.server_settings()) as dserver:
        with pytest.raises(HandshakeError, match="OCSP staple refused: missing"):
            await open_dtls_channel(
                "127.0.0.1",
                port_of(dserver),
                settings=pki.client_settings(require_ocsp=True),
                server_hostname="localhost",
            )


async def test_empty_staple_file_means_no_staple(tmp_path: Path, pki: PKIFiles) -> None:
    settings = stapling_settings(pki, write_staple(tmp_path, b""))
    async with running_tls_server(settings) as server:
        stream = await open_tls_stream(
            "127.0.0.1",
            port_of(server),
            settings=pki.client_settings(request_ocsp=True),
            server_hostname="localhost",
        )
        assert stream.info.ocsp is not None and stream.info.ocsp.state is OCSPState.MISSING
        await stream.aclose()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_resumed_session_passes_a_requiring_client(
    tmp_path: Path, pki: PKIFiles, version: str
) -> None:
    settings = stapling_settings(pki, write_staple(tmp_path, good_staple(pki)))
    client = pki.client_settings(require_ocsp=True, max_version=version)
    async with running_tls_server(settings) as server:
        port = port_of(server)
        first = await open_tls_stream(
            "127.0.0.1", port, settings=client, server_hostname="localhost"
        )
        await first.send_all(b"x")  # TLS 1.3 tickets come with the first reply
        assert await first.receive_some() == b"x"
        session = first.session
        await first.aclose()
        second = await open_tls_stream(
            "127.0.0.1", port, settings=client, session=session, server_hostname="localhost"
        )
        assert second.info.resumed
        # No certificate, so no staple, on resumption: nothing to refuse.
        assert second.info.ocsp is None or second.info.ocsp.state is OCSPState.RESUMED
        await second.aclose()


async def test_reload_picks_up_a_new_staple(tmp_path: Path, pki: PKIFiles) -> None:
    staple = write_staple(tmp_path, good_staple(pki))
    settings = stapling_settings(pki, staple)
    client = pki.client_settings(request_ocsp=True)
    async with trio.open_nursery() as nursery:
        service = Service(settings)
        await service.bind(0, "127.0.0.1")
        await nursery.start(service.run)
        stream = await open_tls_stream(
            "127.0.0.1", service.port, settings=client, server_hostname="localhost"
        )
        assert stream.info.ocsp is not None and stream.info.ocsp.good
        await stream.aclose()
        revoked = make_response(pki.pki.server.cert, pki.pki.ca, status=ocsp.OCSPCertStatus.REVOKED)
        staple.write_bytes(revoked)
        assert service.reload()
        for opener in (open_tls_stream, open_dtls_channel):
            conn = await opener(
                "127.0.0.1", service.port, settings=client, server_hostname="localhost"
            )
            assert conn.info.ocsp is not None
            assert conn.info.ocsp.state is OCSPState.REVOKED, opener
            await conn.aclose()
        # A bad file on reload: refused, the previous staple stays.
        staple.write_bytes(b"garbage")
        assert not service.reload()
        nursery.cancel_scope.cancel()


@pytest.mark.interop
@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command-line tool on PATH")
async def test_openssl_s_client_status_sees_the_staple(tmp_path: Path, pki: PKIFiles) -> None:
    settings = stapling_settings(pki, write_staple(tmp_path, good_staple(pki)))
    async with running_tls_server(settings) as server:
        args = s_client_args(port_of(server), pki, "-status")
        async with openssl_process(*args) as client:
            await client.wait_for(b"Verify return code")
            await client.close_stdin()
            await client.wait_exit()
            report = client.stdout.decode(errors="replace")
    assert "OCSP Response Status: successful" in report, report
    assert "Cert Status: good" in report, report


# -- the command line ---------------------------------------------------------------


def test_serve_with_a_missing_staple_file_names_it(tmp_path: Path, pki: PKIFiles) -> None:
    missing = tmp_path / "missing.der"
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    result = run_cli("serve", *flags, "--port", "0", "--ocsp-staple", str(missing))
    assert_one_line_error(result, f"OCSP staple file not found: {missing}")


def test_config_file_key_ocsp_staple(tmp_path: Path, pki: PKIFiles) -> None:
    write_staple(tmp_path, good_staple(pki))
    config = tmp_path / "tlsd.toml"
    config.write_text(
        f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nocsp_staple = "staple.der"\n'
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert f'ocsp_staple = "{tmp_path / "staple.der"}"' in result.stdout
    (tmp_path / "staple.der").write_bytes(b"junk")
    assert_one_line_error(run_cli("check-config", str(config)), "not a DER OCSP response")


async def test_client_command_prints_and_requires_the_staple(tmp_path: Path, pki: PKIFiles) -> None:
    staple = write_staple(tmp_path, good_staple(pki))
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    async with serving_without_stop(*flags, "--ocsp-staple", str(staple)) as (_, banner):
        for proto in ("tls", "dtls"):
            port = bound_port(banner, "tcp" if proto == "tls" else "udp")
            args = [proto, f"127.0.0.1:{port}", "--ca", str(pki.ca), "--servername", "localhost"]
            result = await run_client(*args, "--ocsp")
            assert result.returncode == 0, result.stderr
            assert "ocsp:     good (not revoked; valid until" in result.stderr.decode()
            assert result.stdout == b"hello\n"
    async with serving_without_stop(*flags) as (_, banner):
        port = bound_port(banner, "tcp")
        args = ["tls", f"127.0.0.1:{port}", "--ca", str(pki.ca), "--servername", "localhost"]
        result = await run_client(*args, "--ocsp")
        assert result.returncode == 2, result.stderr
        assert "OCSP staple refused: missing" in result.stderr.decode()
        plain = await run_client(*args)
        assert plain.returncode == 0 and b"ocsp:" not in plain.stderr


async def run_client(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [*CLI, "client", *args],
        stdin=b"hello\n",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
