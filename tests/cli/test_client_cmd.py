"""trio-tlsd client: negotiated parameters on stderr, echoes on stdout, one-line errors."""

from __future__ import annotations

import argparse
import socket
import sys

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from trio_tls_dtls.cli.targets import Target, parse_target

CLI = [sys.executable, "-m", "trio_tls_dtls"]
LINES = b"hello\nworld\n"


async def client(*args: str, stdin: bytes = LINES) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [*CLI, "client", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def assert_one_line_error(result: trio.CompletedProcess[bytes], *fragments: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def unused_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- HOST:PORT -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4433", Target("127.0.0.1", 4433)),
        ("localhost:1", Target("localhost", 1)),
        ("[::1]:4433", Target("::1", 4433)),
        ("[fe80::1%lo]:99", Target("fe80::1%lo", 99)),
    ],
)
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert str(parse_target(str(expected))) == str(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("4433", "expected HOST:PORT"),
        (":4433", "expected HOST:PORT"),
        ("::1:4433", "need brackets"),
        ("[::1:4433", "unclosed"),
        ("[nothost]:4433", "not an IPv6 address"),
        ("host:http", "port must be an integer"),
        ("host:0", "1-65535"),
        ("host:70000", "1-65535"),
    ],
)
def test_parse_target_errors(text: str, fragment: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        parse_target(text)


async def test_bad_target_is_a_one_line_usage_error() -> None:
    result = await client("tls", "::1:4433")
    assert_one_line_error(result, "HOST:PORT", "[::1]:4433")


# -- echo over TLS and DTLS ----------------------------------------------------------


async def test_tls_client_echoes_stdin_and_describes_the_server(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        result = await client("tls", f"127.0.0.1:{port_of(server)}", "--ca", str(pki.ca))
    err = result.stderr.decode()
    assert result.returncode == 0, err
    # Only the echoes on stdout, so the client works in a pipe.
    assert result.stdout == LINES
    assert "protocol: TLSv1.3" in err
    assert "cipher:   TLS_" in err
    assert "chain[0]: subject=CN=localhost" in err
    assert "WARNING" not in err


async def test_dtls_client_echoes_each_line_as_a_datagram(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        result = await client(
            "dtls", f"127.0.0.1:{port_of(server)}", "--ca", str(pki.ca), stdin=b"one\ntwo\nthree\n"
        )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == b"one\ntwo\nthree\n"
    assert "protocol: DTLSv1.2" in err
    assert "chain[0]: subject=CN=localhost" in err


@pytest.mark.parametrize("proto", ["tls", "dtls"])
async def test_reconnect_resumes_the_session(pki: PKIFiles, proto: str) -> None:
    running = running_tls_server if proto == "tls" else running_dtls_server
    async with running(pki.server_settings()) as server:
        result = await client(
            proto, f"127.0.0.1:{port_of(server)}", "--ca", str(pki.ca), "--reconnect", "2"
        )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == LINES  # reconnecting adds nothing to stdout
    assert "resumed:  no" in err  # the first session: a full handshake
    protocol = "TLSv1.3" if proto == "tls" else "DTLSv1.2"
    for attempt in (1, 2):
        assert f"reconnect {attempt}: resumed: yes ({protocol}, " in err, err


async def test_negative_reconnect_is_one_line() -> None:
    result = await client("tls", "127.0.0.1:9", "--reconnect", "-1")
    assert_one_line_error(result, "--reconnect")


async def test_client_over_ipv6_with_servername(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings(), host="::1") as server:
        port = port_of(server)
        result = await client(
            "tls",
            f"[::1]:{port}",
            "--ca",
            str(pki.ca),
            "--servername",
            "localhost",
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == LINES
    assert f"connected to [::1]:{port}" in result.stderr.decode()


async def test_empty_input_just_connects_and_exits(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        result = await client("tls", f"127.0.0.1:{port_of(server)}", "--ca", str(pki.ca), stdin=b"")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""


async def test_mutual_tls_with_and_without_a_client_certificate(pki: PKIFiles) -> None:
    async with running_tls_server(pki.mtls_server_settings()) as server:
        target = f"127.0.0.1:{port_of(server)}"
        good = await client(
            "tls",
            target,
            "--ca",
            str(pki.ca),
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
        )
        half = await client("tls", target, "--ca", str(pki.ca), "--cert", str(pki.client_cert))
    assert good.returncode == 0, good.stderr.decode()
    assert good.stdout == LINES
    assert_one_line_error(half, "--cert and --key go together")


async def test_insecure_warns_and_skips_verification(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        result = await client("tls", f"127.0.0.1:{port_of(server)}", "--insecure")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == LINES
    assert "WARNING: --insecure" in err
    assert "NOT verified" in err


# -- errors ---------------------------------------------------------------------------


async def test_untrusted_server_certificate_is_one_line(pki: PKIFiles, other_pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        result = await client("tls", f"127.0.0.1:{port_of(server)}", "--ca", str(other_pki.ca))
    assert_one_line_error(result, "TLS handshake with 127.0.0.1", "certificate verify failed")
    assert result.stdout == b""


async def test_wrong_server_name_is_one_line(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        result = await client(
            "dtls",
            f"127.0.0.1:{port_of(server)}",
            "--ca",
            str(pki.ca),
            "--servername",
            "not-this-host.example",
        )
    assert_one_line_error(result, "DTLS handshake with 127.0.0.1")


async def test_nothing_listening_tls() -> None:
    port = unused_port(socket.SOCK_STREAM)
    result = await client("tls", f"127.0.0.1:{port}")
    assert_one_line_error(result, f"127.0.0.1:{port}", "connection refused")


async def test_nothing_listening_dtls() -> None:
    port = unused_port(socket.SOCK_DGRAM)
    result = await client("dtls", f"127.0.0.1:{port}", "--timeout", "3")
    assert_one_line_error(result, f"127.0.0.1:{port}", "nothing is listening")


async def test_dtls_line_too_long_for_one_datagram(pki: PKIFiles) -> None:
    async with running_dtls_server(pki.server_settings()) as server:
        result = await client(
            "dtls", f"127.0.0.1:{port_of(server)}", "--ca", str(pki.ca), stdin=b"x" * 5000 + b"\n"
        )
    assert result.returncode == 2
    assert "does not fit in one DTLS datagram" in result.stderr.decode().splitlines()[-1]
