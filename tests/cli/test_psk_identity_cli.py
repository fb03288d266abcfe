"""``serve --psk-file``, ``--allow-client-subject/--allow-client-san``, ``--crl-file`` and
``client --psk-identity/--psk-file``: real processes, one-line errors, reloads."""

from __future__ import annotations

import datetime
import signal
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import _read_until, assert_one_line_error, bound_port, run_cli, serving
from tests.cli.test_client_cmd import client
from tests.conftest import PKIFiles
from tests.identity_certs import issue_client_cert, write_crl
from trio_tls_dtls import ClientSettings, HandshakeError, open_dtls_channel, open_tls_stream
from trio_tls_dtls.cli.config_file import load_config_file

KEY = "000102030405060708090a0b0c0d0e0f"
NEW_KEY = "f0e0d0c0b0a090807060504030201000"


def write_psk(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def cert_flags(pki: PKIFiles) -> list[str]:
    return ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]


# -- one-line errors -----------------------------------------------------------------------


def test_bad_psk_file_is_one_line_naming_file_and_line(pki: PKIFiles, tmp_path: Path) -> None:
    psk = write_psk(tmp_path / "keys.psk", f"# ok\nsensor-1:{KEY}\nsensor-2 {KEY}\n")
    result = run_cli("serve", *cert_flags(pki), "--psk-file", str(psk))
    assert_one_line_error(result, f"psk_file {psk} line 3: expected IDENTITY:HEXKEY")


def test_psk_file_readable_by_others_is_refused(pki: PKIFiles, tmp_path: Path) -> None:
    psk = write_psk(tmp_path / "keys.psk", f"sensor-1:{KEY}\n", 0o644)
    result = run_cli("serve", *cert_flags(pki), "--psk-file", str(psk))
    assert_one_line_error(result, str(psk), "mode 644", "chmod 600")


def test_identity_rules_need_required_client_certificates(pki: PKIFiles) -> None:
    result = run_cli(
        "serve", *cert_flags(pki), "--ca", str(pki.ca), "--verify-client", "optional",
        "--allow-client-san", "spiffe://example.org/*",
    )  # fmt: skip
    assert_one_line_error(result, "need verify_client=required")
    result = run_cli(
        "serve", *cert_flags(pki), "--ca", str(pki.ca), "--verify-client", "required",
        "--allow-client-subject", "not a subject",
    )  # fmt: skip
    assert_one_line_error(result, "allow_client_subjects: cannot parse 'not a subject'")


def test_expired_crl_is_refused(pki: PKIFiles, tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    crl = write_crl(pki, tmp_path / "ca.crl", next_update=past)
    result = run_cli(
        "serve", *cert_flags(pki), "--ca", str(pki.ca), "--verify-client", "required",
        "--crl-file", str(crl),
    )  # fmt: skip
    assert_one_line_error(result, f"crl_file {crl}", "expired on")


async def test_client_psk_flags_are_checked(tmp_path: Path) -> None:
    psk = write_psk(tmp_path / "keys.psk", f"sensor-1:{KEY}\n")
    result = await client("tls", "127.0.0.1:9", "--psk-identity", "sensor-1")
    assert_one_line_error_bytes(result, "--psk-identity and --psk-file go together")
    result = await client("tls", "127.0.0.1:9", "--psk-identity", "nobody", "--psk-file", str(psk))
    assert_one_line_error_bytes(result, f"psk_file {psk} has no identity 'nobody'")


def assert_one_line_error_bytes(result: trio.CompletedProcess[bytes], fragment: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err


# -- the config file ---------------------------------------------------------------------------


def test_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        'psk_file = "keys.psk"\ncrl_file = "ca.crl"\n'
        'allow_client_subject = ["CN=a,O=b"]\n'
        'allow_client_san = ["*.clients.example.com", "spiffe://example.org/ns/web/*"]\n'
    )
    assert load_config_file(config) == {
        "psk_file": tmp_path / "keys.psk",
        "crl_file": tmp_path / "ca.crl",
        "allow_client_subject": ["CN=a,O=b"],
        "allow_client_san": ["*.clients.example.com", "spiffe://example.org/ns/web/*"],
    }


# -- serving --------------------------------------------------------------------------------------


async def test_psk_serve_client_and_reload(pki: PKIFiles, tmp_path: Path) -> None:
    """serve --psk-file; trio-tlsd client with the same file; SIGHUP picks up a new key."""
    psk = write_psk(tmp_path / "keys.psk", f"# sensors\nsensor-1:{KEY}\n")
    async with serving(tmp_path, *cert_flags(pki), "--psk-file", str(psk)) as (process, banner):
        port = bound_port(banner, "tcp")
        for proto in ("tls", "dtls"):
            result = await client(proto, f"127.0.0.1:{port}", "--psk-identity", "sensor-1",
                                  "--psk-file", str(psk), "--ca", str(pki.ca))  # fmt: skip
            assert result.returncode == 0, result.stderr.decode()
            assert result.stdout == b"hello\nworld\n"
            assert "psk identity: sensor-1" in result.stderr.decode()
        log = await _read_until(process, b"psk_identity=sensor-1\n")
        assert b"reason=peer_closed psk_identity=sensor-1" in log

        write_psk(psk, f"sensor-1:{NEW_KEY}\n")
        process.send_signal(signal.SIGHUP)
        await _read_until(process, b"reloaded certificates")
        old = ClientSettings(
            psk_identity="sensor-1", psk_key=bytes.fromhex(KEY), max_version="1.2",
            handshake_timeout=2.0,
        )  # fmt: skip
        with pytest.raises(HandshakeError, match="unknown or wrong key"):
            await open_tls_stream("127.0.0.1", port, settings=old)
        new = ClientSettings(psk_identity="sensor-1", psk_key=bytes.fromhex(NEW_KEY))
        channel = await open_dtls_channel("127.0.0.1", port, settings=new)
        assert channel.info.psk_identity == "sensor-1"
        await channel.aclose()


async def test_allow_client_san_refuses_the_dev_client(pki: PKIFiles, tmp_path: Path) -> None:
    _, web = issue_client_cert(pki, "web-cli", uris=["spiffe://example.org/ns/web/sa/a"])
    flags = [
        *cert_flags(pki), "--ca", str(pki.ca), "--verify-client", "required",
        "--allow-client-san", "spiffe://example.org/ns/web/*", "--tls-only",
    ]  # fmt: skip
    async with serving(tmp_path, *flags) as (process, banner):
        target = f"127.0.0.1:{bound_port(banner, 'tcp')}"
        common = ["--ca", str(pki.ca), "--servername", "localhost"]
        ok = await client("tls", target, *common, "--cert", str(web.cert_file),
                          "--key", str(web.key_file))  # fmt: skip
        assert ok.returncode == 0, ok.stderr.decode()
        refused = await client("tls", target, *common, "--cert", str(pki.client_cert),
                               "--key", str(pki.client_key))  # fmt: skip
        assert refused.returncode != 0
        assert "handshake failure" in refused.stderr.decode()
        log = await _read_until(process, b"handshake_error=")
        assert b'handshake_error="client certificate not allowed: subject ' in log
