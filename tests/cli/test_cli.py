"""trio-tlsd on the command line: certs, serve, and one-line errors."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.conftest import PKIFiles
from trio_tls_dtls import (
    ClientSettings,
    CookieSecrets,
    HandshakeError,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.cli.main import main

CLI = [sys.executable, "-m", "trio_tls_dtls"]
EMPTY_DIR = Path(tempfile.mkdtemp(prefix="trio-tlsd-cli-"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Never in the repo: `serve` without --cert would make ./certs there.
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd if cwd is not None else EMPTY_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_certs_writes_the_dev_pki(tmp_path: Path) -> None:
    assert main(["certs", "--dir", str(tmp_path / "pki")]) == 0
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == ["ca.key", "ca.pem", "client.key", "client.pem", "server.key", "server.pem"]
    for key in ("ca.key", "server.key", "client.key"):
        assert (tmp_path / "pki" / key).stat().st_mode & 0o777 == 0o600


def test_certs_refuses_to_overwrite(tmp_path: Path) -> None:
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "server.key").read_bytes()
    result = run_cli("certs", "--dir", str(tmp_path))
    assert_one_line_error(result, "already holds", "--force")
    assert (tmp_path / "server.key").read_bytes() == before
    assert main(["certs", "--dir", str(tmp_path), "--force", "--key-type", "rsa"]) == 0
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "server.key").read_bytes()
    assert (tmp_path / "server.key").read_bytes() != before


def test_version_via_python_m() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("trio-tlsd ")


def test_missing_certificate_names_the_path(tmp_path: Path, pki: PKIFiles) -> None:
    missing = tmp_path / "nope.pem"
    result = run_cli("serve", "--cert", str(missing), "--key", str(pki.server_key))
    assert_one_line_error(result, "not found", str(missing))


def test_key_that_does_not_match(pki: PKIFiles) -> None:
    result = run_cli("serve", "--cert", str(pki.client_cert), "--key", str(pki.server_key))
    assert_one_line_error(result, "does not match", str(pki.server_key), str(pki.client_cert))


def test_unreadable_certificate(tmp_path: Path, pki: PKIFiles) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    result = run_cli("serve", "--cert", str(garbage), "--key", str(pki.server_key))
    assert_one_line_error(result, "no valid PEM certificate", str(garbage))


def test_expired_certificate(tmp_path: Path, pki: PKIFiles) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = pki.pki.issue_server(
        not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    cert, key = tmp_path / "old.pem", tmp_path / "old.key"
    cert.write_bytes(old.cert_pem)
    key.write_bytes(old.key_pem)
    result = run_cli("serve", "--cert", str(cert), "--key", str(key))
    assert_one_line_error(result, "expired on", str(cert))


def test_encrypted_key_needs_its_passphrase(tmp_path: Path, pki: PKIFiles) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(pki.pki.server.encrypted_key_pem(b"sesame"))
    key.chmod(0o600)
    result = run_cli("serve", "--cert", str(pki.server_cert), "--key", str(key))
    assert_one_line_error(result, "is encrypted", str(key))
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("open\n")
    result = run_cli(
        "serve",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(key),
        "--key-password-file",
        str(wrong),
    )
    assert_one_line_error(result, "wrong passphrase")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--port", "70000"], "port must be 0-65535"),
        (["--port", "http"], "port must be an integer"),
        (["--idle-timeout", "soon"], "seconds"),
        (["--max-connection-lifetime", "-5"], "expected a positive number of seconds, not -5"),
        (["--max-connections", "-1"], "positive integer"),
        (["--verify-client", "sometimes"], "invalid choice"),
        (["--mtu", "100"], "MTU must be 512-65507 bytes, not 100"),
        (["--max-peers", "0"], "positive integer"),
        (
            ["--reload-interval", "-1"],
            "argument --reload-interval: expected 0 or a positive number",
        ),
        (["--ticket-key-rotation", "daily"], "argument --ticket-key-rotation: expected a number"),
    ],
)
def test_invalid_option_values(flags: list[str], fragment: str) -> None:
    assert_one_line_error(run_cli("serve", *flags), fragment)


def test_port_in_use(pki: PKIFiles) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
        )
    assert_one_line_error(result, f"port {port} is already in use")


@asynccontextmanager
async def serving_without_stop(
    *flags: str, cwd: Path = EMPTY_DIR
) -> AsyncIterator[tuple[trio.Process, str]]:
    """`trio-tlsd serve` on an ephemeral loopback port: the process and its banner.

    Killed on the way out if still running.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await trio.lowlevel.open_process(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *flags],
        cwd=cwd,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(20):
            # The banner, then one "connect with:" line per protocol served.
            hints = 1 if {"--tls-only", "--dtls-only"} & set(flags) else 2
            while output.count(b"connect with:") < hints or not output.endswith(b"\n"):
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        yield process, output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def serving(cwd: Path, *flags: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """As serving_without_stop; then SIGINT, and the process must exit 0 by itself."""
    async with serving_without_stop(*flags, cwd=cwd) as (process, banner):
        yield process, banner
        process.send_signal(signal.SIGINT)
        rest = await _read_until_exit(process)
        assert process.returncode == 0, rest
        assert "trio-tlsd: drained:" in rest, rest


def bound_port(banner: str, proto: str) -> int:
    return int(banner.split(f"on {proto} 127.0.0.1:")[1].split()[0].rstrip(";"))


async def test_serve_on_defaults_makes_dev_pki_and_echoes(tmp_path: Path) -> None:
    """What a new user does: `trio-tlsd serve` in an empty folder, then connects over both."""
    async with serving(tmp_path) as (_, banner):
        assert "created a development PKI" in banner
        assert "openssl s_client -connect localhost:" in banner
        assert "openssl s_client -dtls1_2 -connect localhost:" in banner
        port = bound_port(banner, "tcp")
        assert bound_port(banner, "udp") == port  # the same port number for both
        settings = ClientSettings(ca_file=tmp_path / "certs" / "ca.pem")
        stream = await open_tls_stream(
            "127.0.0.1", port, settings=settings, server_hostname="localhost"
        )
        await stream.send_all(b"hello from a new user")
        assert await stream.receive_some() == b"hello from a new user"
        await stream.aclose()
        channel = await open_dtls_channel(
            "127.0.0.1", port, settings=settings, server_hostname="localhost"
        )
        await channel.send(b"and over DTLS")
        assert await channel.receive() == b"and over DTLS"
        await channel.aclose()


@pytest.mark.parametrize(
    ("flag", "served", "absent"), [("--tls-only", "tcp", "udp"), ("--dtls-only", "udp", "tcp")]
)
async def test_serve_one_protocol_only(pki: PKIFiles, flag: str, served: str, absent: str) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), flag]
    async with serving(pki.ca.parent, *flags) as (_, banner):
        assert f"on {served} 127.0.0.1:" in banner
        assert f"on {absent} " not in banner
        port = bound_port(banner, served)
        settings = pki.client_settings(handshake_timeout=2.0)
        other = open_dtls_channel if served == "tcp" else open_tls_stream
        with pytest.raises((HandshakeError, OSError)):
            await other("127.0.0.1", port, settings=settings, server_hostname="localhost")


def test_tls_only_and_dtls_only_exclude_each_other() -> None:
    assert_one_line_error(run_cli("serve", "--tls-only", "--dtls-only"), "not allowed with")


def test_udp_port_in_use(pki: PKIFiles) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
            "--dtls-only",
        )
    assert_one_line_error(result, f"port {port} is already in use", "UDP")


def test_cookie_secret_command(tmp_path: Path, pki: PKIFiles) -> None:
    path = tmp_path / "cookie.key"
    assert main(["cookie-secret", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    CookieSecrets.from_file(path)  # loads
    assert_one_line_error(run_cli("cookie-secret", str(path)), "already exists")
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    result = run_cli(
        "serve", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--cookie-secret-file", str(short),
    )  # fmt: skip
    assert_one_line_error(result, str(short), "at least 32")


async def _read_until_exit(process: trio.Process) -> str:
    assert process.stderr is not None
    rest = b""
    with trio.fail_after(15):
        while chunk := await process.stderr.receive_some():
            rest += chunk
        await process.wait()
    return rest.decode()


async def test_sigterm_drains_open_connections(pki: PKIFiles) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    async with serving_without_stop(*flags) as (process, banner):
        port = bound_port(banner, "tcp")
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # the server's close_notify
        await stream.aclose()  # the handler's peer closes: the drain completes
        rest = await _read_until_exit(process)
        assert process.returncode == 0, rest
        assert "SIGTERM received: draining 1 open" in rest
        assert "trio-tlsd: drained: TLS: 1 connections, 1 handshakes ok" in rest
        assert "0 still open when stopped" in rest


async def test_second_signal_stops_at_once(pki: PKIFiles) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), "--tls-only"]
    async with serving_without_stop(*flags) as (process, banner):
        port = bound_port(banner, "tcp")
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        process.send_signal(signal.SIGINT)
        assert await stream.receive_some() == b""  # draining; we do not close
        process.send_signal(signal.SIGINT)
        rest = await _read_until_exit(process)
        assert process.returncode == 1, rest
        assert "stopped at once by a second signal" in rest
        assert "1 still open when stopped" in rest
        await stream.aclose()


async def _read_until(process: trio.Process, marker: bytes) -> bytes:
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(10):
        while marker not in seen:
            chunk = await process.stderr.receive_some()
            assert chunk, seen
            seen += chunk
    return seen


async def test_sighup_reloads_the_certificate(pki: PKIFiles, tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(0o600)
    flags = ["--cert", str(cert), "--key", str(key), "--tls-only"]
    async with serving(tmp_path, *flags) as (process, banner):
        port = bound_port(banner, "tcp")
        fresh = pki.pki.issue_server()
        cert.write_bytes(fresh.cert_pem)
        key.write_bytes(fresh.key_pem)
        process.send_signal(signal.SIGHUP)
        await _read_until(process, b"reloaded certificates")
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        assert stream.info.certificate is not None
        assert stream.info.certificate.serial_number == fresh.cert.serial_number
        await stream.aclose()
        key.write_text("garbage\n")
        process.send_signal(signal.SIGHUP)
        log = await _read_until(process, b"reload failed")
        assert str(key).encode() in log


async def test_drain_timeout_cuts_connections_that_stay(pki: PKIFiles) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    async with serving_without_stop(*flags, "--drain-timeout", "0.5") as (process, banner):
        port = bound_port(banner, "tcp")
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        process.send_signal(signal.SIGTERM)
        rest = await _read_until_exit(process)  # we never close: the timeout does
        assert process.returncode == 0, rest
        assert "trio-tlsd: drained:" in rest
        assert "1 still open when stopped" in rest
        await stream.aclose()
