"""`trio-tlsd serve --workers N`: processes sharing a port, supervised, sharing keys."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

from tests.cli.test_cli import CLI, EMPTY_DIR, assert_one_line_error, run_cli
from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from trio_tls_dtls import ClientSettings, ConfigError, open_dtls_channel, open_tls_stream
from trio_tls_dtls.core.dtls_cookie import write_secret_file
from trio_tls_dtls.service.cpu_quota import usable_cpus
from trio_tls_dtls.service.service import Service
from trio_tls_dtls.service.workers import (
    Supervisor,
    restart_delay,
    serve_workers,
    worker_count,
    worker_offload,
)

pytestmark = pytest.mark.timeout(90)

SERVING = re.compile(rb"worker (\d+) \(pid (\d+)\): serving")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port number free for both TCP and UDP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no free port")


class Workers:
    """A running `serve --workers` parent and what it has printed."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.output = b""

    async def read_until(self, pattern: re.Pattern[bytes], count: int = 1) -> None:
        assert self.process.stderr is not None
        with trio.fail_after(20):
            while len(pattern.findall(self.output)) < count:
                chunk = await self.process.stderr.receive_some()
                assert chunk, self.output.decode()
                self.output += chunk

    def serving_pids(self) -> list[int]:
        """Every worker pid that has announced itself, in order."""
        return [int(pid) for _, pid in SERVING.findall(self.output)]

    def children(self) -> set[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in path.read_text().split()}

    async def wait_exit(self) -> str:
        assert self.process.stderr is not None
        with trio.fail_after(20):
            while chunk := await self.process.stderr.receive_some():
                self.output += chunk
            await self.process.wait()
        return self.output.decode()


@asynccontextmanager
async def workers(*flags: str, count: int = 2) -> AsyncIterator[Workers]:
    """``trio-tlsd serve --workers COUNT`` on a free port, once every worker serves."""
    port = free_port()
    command = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    async with _running([*command, "--workers", str(count), *flags], port, count) as running:
        yield running


@asynccontextmanager
async def app_workers(pki: PKIFiles, count: int = 2) -> AsyncIterator[Workers]:
    """``tests/workers_app.py``: :func:`serve_workers` with handlers that send the pid."""
    port = free_port()
    command = [sys.executable, "-m", "tests.workers_app", str(port)]
    command += [str(pki.server_cert), str(pki.server_key), str(count)]
    async with _running(command, port, count) as running:
        yield running


@asynccontextmanager
async def _running(command: Sequence[str], port: int, count: int) -> AsyncIterator[Workers]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = await trio.lowlevel.open_process(
        list(command),
        start_new_session=True,  # its own process group, as a shell job has
        cwd=EMPTY_DIR,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path),
    )
    running = Workers(process, port)
    try:
        await running.read_until(SERVING if count > 1 else re.compile(rb": serving"), count)
        yield running
    finally:
        if process.returncode is None:
            # Workers outlive a killed parent: stop them first, by pid.
            for pid in _children_of(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            await process.wait()


def _children_of(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def pki_flags(pki: PKIFiles) -> list[str]:
    return ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]


async def echo_both(pki: PKIFiles, port: int, message: bytes) -> None:
    settings = pki.client_settings()
    stream = await open_tls_stream("127.0.0.1", port, settings=settings)
    await stream.send_all(message)
    assert await stream.receive_some() == message
    await stream.aclose()
    channel = await open_dtls_channel("127.0.0.1", port, settings=settings)
    await channel.send(message)
    assert await channel.receive() == message
    await channel.aclose()


async def test_a_killed_worker_is_restarted_and_sigterm_drains_all(pki: PKIFiles) -> None:
    async with workers(*pki_flags(pki)) as running:
        first = running.serving_pids()
        assert len(set(first)) == 2
        assert running.children() == set(first)
        await echo_both(pki, running.port, b"two workers, one port")

        os.kill(first[0], signal.SIGKILL)
        await running.read_until(SERVING, 3)
        replacement = running.serving_pids()[2]
        assert replacement not in first
        assert running.children() == {first[1], replacement}
        assert b"exited unexpectedly (killed by SIGKILL): restarting" in running.output
        for i in range(4):  # whichever worker the kernel picks, it answers
            await echo_both(pki, running.port, b"still serving %d" % i)

        # A connection open during the drain gets close_notify; exit status 0.
        stream = await open_tls_stream("127.0.0.1", running.port, settings=pki.client_settings())
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        running.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""
        await stream.aclose()
        log = await running.wait_exit()
        assert running.process.returncode == 0, log
        assert log.count(": drained:") == 2, log
        assert "all workers stopped (1 restarted after a crash)" in log


def _server_socket_inode(server_port: int, client_port: int) -> int:
    """The inode of the server side of the loopback TCP connection to *client_port*."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_port:
            return int(fields[9])
    raise AssertionError(f"no server socket for client port {client_port}")


def _process_holding(inode: int, pids: set[int]) -> int:
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"socket inode {inode} is in none of {pids}")


async def _connect_and_find_worker(
    settings: ClientSettings, running: Workers, session: SSL.Session | None
) -> tuple[int, bool, SSL.Session | None]:
    stream = await open_tls_stream("127.0.0.1", running.port, settings=settings, session=session)
    await stream.send_all(b"x")
    assert await stream.receive_some() == b"x"  # TLS 1.3 tickets have arrived
    client_port = stream.transport_stream.socket.getsockname()[1]  # type: ignore[attr-defined]
    inode = _server_socket_inode(running.port, client_port)
    pid = _process_holding(inode, running.children())
    resumed, ticket = stream.info.resumed, stream.session
    await stream.aclose()
    return pid, resumed, ticket


async def test_a_session_resumes_on_another_worker(pki: PKIFiles) -> None:
    # The workers were forked after the contexts were built: one set of ticket keys.
    async with workers(*pki_flags(pki), "--tls-only") as running:
        settings = pki.client_settings()  # one client context: sessions belong to it
        issuer, resumed, ticket = await _connect_and_find_worker(settings, running, None)
        assert not resumed
        for _ in range(40):  # the kernel spreads connections by their 4-tuple
            pid, resumed, _ = await _connect_and_find_worker(settings, running, ticket)
            if pid != issuer:
                break
        else:
            pytest.fail("40 connections all reached the same worker")
        assert resumed, "a ticket from one worker did not resume on the other"
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()
        assert running.process.returncode == 0


async def test_workers_share_one_cookie_secret(pki: PKIFiles) -> None:
    async with workers(*pki_flags(pki), "--dtls-only") as running:
        fingerprints = re.compile(rb"cookie secret fingerprint ([0-9a-f]+)")
        await running.read_until(fingerprints, 2)
        first = set(fingerprints.findall(running.output))
        assert len(first) == 1  # two workers, one secret (random, made by the parent)
        os.kill(running.serving_pids()[0], signal.SIGKILL)
        await running.read_until(fingerprints, 3)
        assert set(fingerprints.findall(running.output)) == first  # the restart keeps it
        await echo_both_dtls(pki, running.port)
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()


async def echo_both_dtls(pki: PKIFiles, port: int) -> None:
    channel = await open_dtls_channel("127.0.0.1", port, settings=pki.client_settings())
    await channel.send(b"dtls")
    assert await channel.receive() == b"dtls"
    await channel.aclose()


async def test_cookie_from_one_host_verifies_on_another(pki: PKIFiles, tmp_path: Path) -> None:
    """Two servers (as two hosts behind a load balancer) given one cookie-secret file."""
    secret = tmp_path / "cookie.key"
    write_secret_file(secret)
    flags = [*pki_flags(pki), "--dtls-only", "--cookie-secret-file", str(secret)]
    async with workers(*flags, count=1) as a, workers(*flags, count=1) as b:
        client, hello = first_client_hello(pki)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        with sock, trio.fail_after(10):
            await sock.sendto(hello, ("127.0.0.1", a.port))
            client.receive_datagram(await sock.recv(65536))  # A's HelloVerifyRequest
            assert not client.do_handshake()
            [with_cookie] = client.datagrams_to_send()
            await sock.sendto(with_cookie, ("127.0.0.1", b.port))
            reply = await sock.recv(65536)
        # B answers with its ServerHello (handshake type 2), not another
        # HelloVerifyRequest (type 3): A's cookie verified on B.
        assert reply[0] == 22 and reply[13] == 2


def test_worker_count_values() -> None:
    assert worker_count("auto") >= 1  # the usable CPUs: tests/service/test_cpu_quota.py
    assert worker_count(3) == 3
    for bad in (0, -1, "many", True):
        with pytest.raises(ConfigError, match="workers"):
            worker_count(bad)  # type: ignore[arg-type]


def test_workers_flag_errors(pki: PKIFiles, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", "--workers", "0"), "--workers", "1-1024")
    assert_one_line_error(run_cli("serve", "--workers", "lots"), "--workers", "auto")
    result = run_cli("serve", *pki_flags(pki), "--port", "0", "--workers", "2")
    assert_one_line_error(result, "--workers needs a fixed --port")
    config = tmp_path / "bad.toml"
    config.write_text('workers = "several"\n')
    assert_one_line_error(run_cli("check-config", str(config)), str(config), "'workers'")


async def test_sighup_rolls_new_workers_with_the_new_certificate(
    pki: PKIFiles, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(0o600)
    async with workers("--cert", str(cert), "--key", str(key), "--tls-only") as running:
        old = set(running.serving_pids())
        fresh = pki.pki.issue_server()
        cert.write_bytes(fresh.cert_pem)
        key.write_bytes(fresh.key_pem)
        running.process.send_signal(signal.SIGHUP)
        await running.read_until(SERVING, 4)  # a new generation of two
        await running.read_until(re.compile(rb": drained:"), 2)  # the old one drained
        # A worker logs "drained" just before it exits, and stays a child until
        # the supervisor reaps it: wait (bounded) for both old ones to be gone.
        with trio.move_on_after(10):
            while not running.children().isdisjoint(old):
                await trio.sleep(0.05)
        assert running.children().isdisjoint(old)
        settings = pki.client_settings()
        for _ in range(4):
            stream = await open_tls_stream("127.0.0.1", running.port, settings=settings)
            assert stream.info.certificate is not None
            assert stream.info.certificate.serial_number == fresh.cert.serial_number
            await stream.aclose()
        # A bad file keeps the running workers.
        current = running.children()
        key.write_text("garbage\n")
        running.process.send_signal(signal.SIGHUP)
        await running.read_until(re.compile(rb"reload failed, keeping the running workers"))
        assert str(key).encode() in running.output
        assert running.children() == current
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()
        assert running.process.returncode == 0


async def test_second_signal_stops_the_workers_at_once(pki: PKIFiles) -> None:
    # The client reads close_notify but never closes: the drain cannot end by
    # itself before --drain-timeout (30s), so the second SIGTERM must cut it.
    async with workers(*pki_flags(pki), "--tls-only", "--drain-timeout", "30") as running:
        stream = await open_tls_stream("127.0.0.1", running.port, settings=pki.client_settings())
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        running.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # close_notify: draining
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
        assert running.process.returncode == 1, log
        assert "received again: stopping the workers now" in log
        # The worker holding the connection was cut; the idle one may have
        # drained already.
        assert "stopped at once by a second signal" in log
        assert "1 still open when stopped" in log
        await stream.aclose()


# -- the library entry point, with handlers that tell the worker's pid ----------


async def _pid_stream(
    pki: PKIFiles, settings: ClientSettings, port: int, session: SSL.Session | None
) -> tuple[int, bool, SSL.Session | None]:
    stream = await open_tls_stream("127.0.0.1", port, settings=settings, session=session)
    pid = int(await stream.receive_some())  # after it, the TLS 1.3 tickets are in
    await stream.send_all(b"echo")
    assert await stream.receive_some() == b"echo"
    resumed, ticket = stream.info.resumed, stream.session
    await stream.aclose()
    return pid, resumed, ticket


async def test_library_workers_ticket_from_one_pid_resumes_on_another(pki: PKIFiles) -> None:
    async with app_workers(pki) as running:
        pids = set(running.serving_pids())
        assert running.children() == pids
        settings = pki.client_settings()
        issuer, resumed, ticket = await _pid_stream(pki, settings, running.port, None)
        assert issuer in pids and not resumed
        for _ in range(40):  # the kernel spreads connections by their 4-tuple
            pid, resumed, _ = await _pid_stream(pki, settings, running.port, ticket)
            if pid != issuer:
                break
        else:
            pytest.fail("40 connections all reached the same worker")
        assert pid in pids
        assert resumed, f"a ticket from pid {issuer} did not resume on pid {pid}"

        channel = await open_dtls_channel("127.0.0.1", running.port, settings=settings)
        assert int(await channel.receive()) in pids
        await channel.send(b"dtls")
        assert await channel.receive() == b"dtls"
        await channel.aclose()
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
        assert running.process.returncode == 0, log
        assert log.count(": drained:") == 2, log


async def test_library_workers_cookie_verifies_after_its_issuer_is_gone(pki: PKIFiles) -> None:
    """The parent's random cookie secret is in every worker, restarted ones included.

    The client gets a HelloVerifyRequest from one of the workers; then every
    worker is killed and replaced. The ClientHello carrying that cookie,
    from the same client socket, reaches a process that did not issue the
    cookie, and it answers with a ServerHello.
    """
    async with app_workers(pki) as running:
        first = set(running.serving_pids())
        client, hello = first_client_hello(pki)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        with sock:
            with trio.fail_after(10):
                await sock.sendto(hello, ("127.0.0.1", running.port))
                hvr = await sock.recv(65536)
            assert hvr[0] == 22 and hvr[13] == 3  # a HelloVerifyRequest
            client.receive_datagram(hvr)
            assert not client.do_handshake()
            [with_cookie] = client.datagrams_to_send()

            for pid in first:
                os.kill(pid, signal.SIGKILL)
            await running.read_until(SERVING, 4)
            assert running.children().isdisjoint(first)
            with trio.fail_after(10):
                await sock.sendto(with_cookie, ("127.0.0.1", running.port))
                reply = await sock.recv(65536)
        assert reply[0] == 22 and reply[13] == 2, reply[:14]  # ServerHello, not type 3
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
        assert running.process.returncode == 0, log
        assert "(2 restarted after a crash)" in log


def test_serve_workers_refuses_port_zero(pki: PKIFiles) -> None:
    with pytest.raises(ConfigError, match="fixed port"):
        serve_workers(pki.server_settings(), 0, count=2)


# -- the supervisor alone ---------------------------------------------------------


def test_restart_delay_doubles_up_to_the_cap() -> None:
    assert [restart_delay(n, 0.1, 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert restart_delay(10_000, 0.1, 5.0) == 5.0


def test_a_crash_loop_gives_up_after_max_restarts(caplog: pytest.LogCaptureFixture) -> None:
    """A worker that exits at once is restarted max_restarts times, then the parent stops."""
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.service.workers")
    supervisor: Supervisor[None] = Supervisor(
        1,
        prepare=lambda: None,
        run_worker=lambda index, state: 3,
        max_restarts=3,
        restart_window=60.0,
        restart_backoff=0.01,
        max_backoff=0.05,
    )
    assert supervisor.run() == 1
    assert supervisor.restarts == 3
    assert supervisor.pids == []
    text = caplog.text
    for delay in ("0.01", "0.02", "0.04"):  # the backoff doubles
        assert f"exited unexpectedly (exit status 3): restarting in {delay}s" in text
    assert "3 restarts of worker 0 within 60s: giving up, stopping all workers" in text


async def test_ctrl_c_to_the_process_group_drains_the_workers(pki: PKIFiles) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group.
    # The workers are in a group of their own, so each gets one SIGTERM (from
    # the parent) and drains, instead of two signals and a stop at once.
    async with workers(*pki_flags(pki)) as running:
        assert os.getpgid(running.process.pid) == running.process.pid
        for pid in running.serving_pids():
            assert os.getpgid(pid) == pid
        os.killpg(running.process.pid, signal.SIGINT)
        log = await running.wait_exit()
        assert running.process.returncode == 0, log
        assert log.count(": drained:") == 2, log
        assert "stopped at once" not in log


def test_each_worker_counts_its_share_of_the_cpus_for_the_offload(pki: PKIFiles) -> None:
    # OffloadSettings "auto" sends handshakes to threads only with a second
    # core: a worker per CPU has one, a single process has all of them.
    settings = pki.server_settings()
    usable = usable_cpus().count
    assert Service(settings, dtls=False).offload.cores == usable
    assert worker_offload(settings, 1).cores == usable
    assert worker_offload(settings, usable).cores == 1
    assert worker_offload(settings, usable * 4).cores == 1  # never fewer than one
