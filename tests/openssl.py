"""The ``openssl`` command-line tool as a test peer, shared by the interop tests.

``tests/drivers/tls/test_interop.py`` and ``tests/drivers/dtls/test_interop.py`` both run
``openssl s_client`` and ``s_server`` (the system's OpenSSL 3.0) against our
servers and clients. The rules every helper here keeps:

* :func:`openssl_process` owns the process: it kills it by its own PID and
  reaps it on the way out, however the test ended.
* No sleeps: a wait is for a marker in the output or for the exit, and every
  wait has a deadline (:data:`STEP_TIMEOUT`); a timeout raises
  :class:`OpenSSLTimeout` with the whole transcript.
* s_client's session report is stdio-buffered until it exits (data from the
  server is not), so :func:`s_client_echo_session` reads the report after the
  exit, with the echoed line cut out of it.
* :func:`s_client_args` passes ``-no_ign_eof``: closing s_client's stdin is how
  a test ends a good session (close_notify, then exit status 0).
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from subprocess import PIPE
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import PKIFiles
from trio_tls_dtls import PeerInfo, echo_handler

OPENSSL = shutil.which("openssl")

# pytestmark for a test module that runs openssl: skipped only if there is none.
OPENSSL_MARKS = [
    pytest.mark.interop,
    pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command-line tool on PATH"),
]

# Loopback handshakes and echoes take milliseconds; these only bound a hang.
STEP_TIMEOUT = 5.0
KILL_TIMEOUT = 2.0

CLIENT_SUBJECT = "CN=trio-tlsd client,O=trio-tlsd development"


# -- openssl processes ---------------------------------------------------------


class OpenSSLTimeout(AssertionError):
    """An openssl process did not do what a test waited for in time."""


class OpenSSLProcess:
    """A running ``openssl`` command whose stdout and stderr are being collected."""

    def __init__(self, process: trio.Process, args: Sequence[str]) -> None:
        self.process = process
        self.args = tuple(args)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._open_pipes = 2
        self._changed = trio.Event()

    async def _collect(self, pipe: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await pipe.receive_some():
            into += chunk
            self._notify()
        self._open_pipes -= 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def transcript(self) -> str:
        return f"$ openssl {' '.join(self.args)}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    async def poll(self, check: Callable[[], bool], limit: float) -> bool:
        """Whether *check()* came true within *limit* seconds; re-checked as output arrives.

        (A limit rather than the caller's cancel scope, so that a timeout
        can report the process's transcript.)
        """
        with trio.move_on_after(limit):
            while not check():
                await self._changed.wait()
            return True
        return False

    async def wait_until(
        self, check: Callable[[], bool], what: str, limit: float = STEP_TIMEOUT
    ) -> None:
        if not await self.poll(check, limit):
            raise OpenSSLTimeout(f"no {what} within {limit:g}s\n{self.transcript()}")

    async def wait_for(self, marker: bytes, *, stderr: bool = False) -> None:
        buffer = self.stderr if stderr else self.stdout
        where = "stderr" if stderr else "stdout"
        await self.wait_until(lambda: marker in buffer, f"{marker!r} on {where}")

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    @property
    def exited(self) -> bool:
        """True once both output pipes are closed (the process has gone)."""
        return self._open_pipes == 0

    async def wait_exit(self, limit: float = STEP_TIMEOUT) -> int:
        await self.wait_until(lambda: self.exited, "exit", limit)
        with trio.fail_after(limit):
            return await self.process.wait()


@asynccontextmanager
async def openssl_process(*args: str) -> AsyncIterator[OpenSSLProcess]:
    """Run ``openssl *args``; on exit, kill it (by its PID) and reap it."""
    assert OPENSSL is not None
    process = await trio.lowlevel.open_process(
        [OPENSSL, *args], stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    handle = OpenSSLProcess(process, args)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(handle._collect, process.stdout, handle.stdout)
            nursery.start_soon(handle._collect, process.stderr, handle.stderr)
            try:
                yield handle
            finally:
                # Killing it closes its pipes, which ends the collectors.
                process.kill()
    finally:
        process.kill()  # a no-op once it has exited: Popen checks first
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_TIMEOUT):
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
            await process.wait()


def s_client_args(port: int, pki: PKIFiles, *extra: str) -> list[str]:
    """s_client that verifies our server's certificate and host name, as a careful client does."""
    return [
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(pki.ca),
        "-verify_return_error",
        "-servername",
        "localhost",
        "-verify_hostname",
        "localhost",
        "-no_ign_eof",
        *extra,
    ]


def client_cert_args(pki: PKIFiles) -> list[str]:
    return ["-cert", str(pki.client_cert), "-key", str(pki.client_key)]


def unique_line() -> bytes:
    return f"interop {secrets.token_hex(8)}\n".encode()


async def s_client_echo_session(client: OpenSSLProcess) -> str:
    """Send a line, see it echoed, end the session; return s_client's report."""
    line = unique_line()
    await client.send(line)
    await client.wait_for(line)
    await client.close_stdin()
    status = await client.wait_exit()
    assert status == 0, client.transcript()
    return client.stdout.replace(line, b"").decode(errors="replace")


def assert_s_client_report(report: str, version: str, *, dtls: bool = False) -> None:
    """s_client's report of a verified session at *version* (of DTLS with ``dtls``)."""
    # The "New" line names the cipher suite's version: a DTLS 1.2 suite is a TLS 1.2 one.
    assert f"New, TLSv{version}, Cipher is" in report, report
    protocol = f"DTLSv{version}" if dtls else f"TLSv{version}"
    assert re.search(rf"^\s*Protocol\s*: {protocol}$", report, re.MULTILINE), report
    assert "Verify return code: 0 (ok)" in report, report
    assert "Compression: NONE" in report, report


class RecordingEcho:
    """An echo handler (``echo_handler`` unless told), remembering each peer it served.

    Serves ``serve_tls`` as it is, and ``serve_dtls`` as
    ``RecordingEcho(dtls_echo_handler)``.
    """

    def __init__(self, echo: Callable[[Any, PeerInfo], Awaitable[object]] = echo_handler) -> None:
        self.echo = echo
        self.peers: list[PeerInfo] = []

    async def __call__(self, connection: Any, peer: PeerInfo) -> None:
        self.peers.append(peer)
        await self.echo(connection, peer)


async def server_tasks_settled() -> None:
    """Let the server's connection tasks run until they block.

    Our server sends its alert *before* it counts the failed handshake, so a
    peer that has seen the alert does not prove the counter moved yet.
    """
    await trio.testing.wait_all_tasks_blocked()


# -- openssl s_server -----------------------------------------------------------

_ACCEPT_LINE = re.compile(rb"^ACCEPT 127\.0\.0\.1:(\d+)$", re.MULTILINE)


@asynccontextmanager
async def s_server(
    pki: PKIFiles, *extra: str, reverse: bool = True, naccept: int = 1
) -> AsyncIterator[tuple[OpenSSLProcess, int]]:
    """``s_server -rev`` for one connection (*naccept* of them), and the port it listens on.

    ``reverse=False`` leaves out ``-rev`` (DTLS cannot use it): then
    s_server prints what it receives and sends what is written to its stdin.

    With ``-accept 127.0.0.1:0`` OpenSSL 3.0 binds an ephemeral port and
    prints it ("ACCEPT 127.0.0.1:PORT", flushed), so there is no
    pick-a-free-port race to retry. ``-rev`` sends each line back reversed
    and answers a line "CLOSE" with close_notify.
    """
    args = [
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        str(naccept),
        *(["-rev"] if reverse else []),
        "-cert",
        str(pki.server_cert),
        "-key",
        str(pki.server_key),
        *extra,
    ]
    async with openssl_process(*args) as server:
        await server.wait_until(
            lambda: _ACCEPT_LINE.search(server.stdout) is not None, "ACCEPT line"
        )
        match = _ACCEPT_LINE.search(server.stdout)
        assert match is not None
        yield server, int(match.group(1))


def s_server_verify_args(pki: PKIFiles) -> list[str]:
    """s_server options that demand a client certificate issued by *pki*'s CA."""
    return ["-Verify", "1", "-CAfile", str(pki.ca), "-verify_return_error"]
