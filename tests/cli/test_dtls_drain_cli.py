"""``trio-tlsd serve`` is not held by a DTLS client that vanished (issue 14, item 5).

An operator's sequence: a DTLS client process is killed (SIGKILL: no
close_notify) mid-session, the server gets SIGTERM, and the server is started
again on the same port at once. The drain must not wait its full timeout for
a peer that will never answer, so the port is free again at once.
"""

from __future__ import annotations

import signal
import subprocess

import trio

from tests.cli.test_cli import CLI, _read_until_exit, bound_port, serving_without_stop
from tests.conftest import PKIFiles
from trio_tls_dtls.cli.config_file import DEFAULTS

DRAIN_TIMEOUT = float(DEFAULTS["drain_timeout"])  # 10 s: what the drain took before


async def _echoing_dtls_client(port: int, pki: PKIFiles) -> trio.Process:
    """``trio-tlsd client dtls`` in a process of its own, once one line has echoed."""
    client = await trio.lowlevel.open_process(
        [*CLI, "client", "dtls", f"127.0.0.1:{port}", "--ca", str(pki.ca)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert client.stdin is not None and client.stdout is not None
    await client.stdin.send_all(b"ping\n")
    seen = b""
    with trio.fail_after(20):
        while b"ping\n" not in seen:
            chunk = await client.stdout.receive_some()
            assert chunk, seen
            seen += chunk
    return client


async def test_sigterm_with_a_killed_dtls_client_exits_at_once_and_frees_the_port(
    pki: PKIFiles,
) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    async with serving_without_stop(*flags) as (server, banner):
        port = bound_port(banner, "udp")
        client = await _echoing_dtls_client(port, pki)
        client.kill()  # mid-session, without a word
        await client.wait()
        began = trio.current_time()
        server.send_signal(signal.SIGTERM)
        rest = await _read_until_exit(server)
        took = trio.current_time() - began
        assert server.returncode == 0, rest
        assert "SIGTERM received: draining 1 open" in rest
        assert "0 still open when stopped" in rest  # cut after its grace, not at the timeout
        # About a second (the grace) plus the process's exit; never the drain timeout.
        assert took < DRAIN_TIMEOUT / 2, (took, rest)
    # At once, on the same port (TCP and UDP): nothing holds it any more.
    async with serving_without_stop(*flags, "--port", str(port)) as (again, banner):
        assert bound_port(banner, "udp") == bound_port(banner, "tcp") == port
        again.send_signal(signal.SIGTERM)
        rest = await _read_until_exit(again)
        assert again.returncode == 0, rest
