"""Faults an operator meets with ``--workers N`` (issue 14, items 1-3).

* a worker whose supervisor is gone (killed, or exited) drains and exits;
* one worker's death moves no other worker's DTLS sessions (the listening
  sockets belong to the supervisor, one set per worker slot, the same on
  every restart: the SO_REUSEPORT group never changes);
* reloads with ``--metrics-port`` never cost availability, and the restart
  budget is kept per worker slot.

Real processes on loopback; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from tests.conftest import PKIFiles
from tests.service.test_workers import (
    SERVING,
    Workers,
    _running,
    free_port,
    pki_flags,
    workers,
)
from trio_tls_dtls import HandshakeError, open_dtls_channel, open_tls_stream
from trio_tls_dtls.drivers.dtls.channel import DTLSChannel
from trio_tls_dtls.drivers.tls.stream import TLSStream
from trio_tls_dtls.service.restart_budget import RestartBudget

pytestmark = pytest.mark.timeout(120)

DRAINED = re.compile(rb"worker \d+ \(pid \d+\): drained:")


def _alive(pid: int) -> bool:
    """True while *pid* runs (a zombie waiting for its new parent to reap it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def killed_at_exit(pids: list[int]) -> Iterator[None]:
    """SIGKILL whichever of *pids* still runs when the test ends (a failing test's orphans)."""
    try:
        yield
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def all_gone(pids: list[int], seconds: float = 5.0) -> bool:
    """Whether every one of *pids* has exited within *seconds*.

    A process closes its files (so its end of the stderr pipe) just before
    it becomes a zombie: the end of file comes a moment before the exit.
    """
    with trio.move_on_after(seconds):
        while any(_alive(pid) for pid in pids):
            await trio.sleep(0.01)
    return not any(_alive(pid) for pid in pids)


async def read_to_eof(running: Workers, seconds: float) -> str:
    """Everything the parent and its workers print until the last of them has exited.

    Every worker holds the parent's stderr pipe: end of file means none is left.
    """
    assert running.process.stderr is not None
    with trio.fail_after(seconds):
        while chunk := await running.process.stderr.receive_some():
            running.output += chunk
    return running.output.decode()


# -- 1. no orphans -------------------------------------------------------------------


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(pki: PKIFiles) -> None:
    async with workers(*pki_flags(pki), "--tls-only") as running:
        pids = running.serving_pids()
        with killed_at_exit(pids):
            stream = await open_tls_stream(
                "127.0.0.1", running.port, settings=pki.client_settings()
            )
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            os.kill(running.process.pid, signal.SIGKILL)
            with trio.fail_after(10):  # well within a second on an idle machine
                assert await stream.receive_some() == b""  # close_notify: it drains
            await stream.aclose()
            log = await read_to_eof(running, 20)
            assert await all_gone(pids), log
            assert len(DRAINED.findall(running.output)) == 2, log
            assert log.count("supervisor exit received: draining") == 2, log
            # Nobody serves the port any more (no orphan shares it with a restart).
            with pytest.raises(OSError, match="connect"):
                await open_tls_stream("127.0.0.1", running.port, settings=pki.client_settings())


async def test_workers_drain_and_exit_when_the_supervisor_exits(pki: PKIFiles) -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.workers_app", str(port)]
    command += [str(pki.server_cert), str(pki.server_key), "2", "exit-on-reload"]
    async with _running(command, port, 2) as running:
        pids = running.serving_pids()
        with killed_at_exit(pids):
            running.process.send_signal(signal.SIGHUP)  # its reload calls sys.exit(0)
            log = await read_to_eof(running, 10)
            with trio.fail_after(5):
                await running.process.wait()
            assert running.process.returncode == 0, log
            assert "workers_app: supervisor exiting" in log
            assert await all_gone(pids), log
            assert len(DRAINED.findall(running.output)) == 2, log


# -- 2. a worker's death moves no other worker's DTLS sessions ------------------------


async def _pid_channel(pki: PKIFiles, port: int) -> tuple[int, DTLSChannel]:
    channel = await open_dtls_channel("127.0.0.1", port, settings=pki.client_settings())
    return int(await channel.receive()), channel


async def _pid_stream(pki: PKIFiles, port: int) -> tuple[int, TLSStream]:
    stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
    return int(await stream.receive_some()), stream


async def _echoes(conversations: list[DTLSChannel | TLSStream], message: bytes) -> None:
    with trio.fail_after(10):  # a DTLS record to a worker that does not know the peer: no answer
        for conversation in conversations:
            if isinstance(conversation, DTLSChannel):
                await conversation.send(message)
                assert await conversation.receive() == message
            else:
                await conversation.send_all(message)
                assert await conversation.receive_some() == message


@asynccontextmanager
async def app_workers(pki: PKIFiles) -> AsyncIterator[Workers]:
    port = free_port()
    command = [sys.executable, "-m", "tests.workers_app", str(port)]
    command += [str(pki.server_cert), str(pki.server_key), "2"]
    async with _running(command, port, 2) as running:
        yield running


async def test_sessions_on_the_surviving_worker_outlive_a_kill_and_restart(
    pki: PKIFiles,
) -> None:
    """40 DTLS sessions and 10 TLS connections over two workers; each worker is killed in turn.

    Either worker may hold the first place in the kernel's SO_REUSEPORT group
    (where a departing and returning socket moves every other flow), so the
    test kills both, one after the other, and checks the survivor's sessions
    after each restart.
    """
    async with app_workers(pki) as running:
        pids = running.serving_pids()
        by_pid: dict[int, list[DTLSChannel | TLSStream]] = {pid: [] for pid in pids}
        for _ in range(40):
            pid, channel = await _pid_channel(pki, running.port)
            by_pid[pid].append(channel)
        for _ in range(10):
            pid, stream = await _pid_stream(pki, running.port)
            by_pid[pid].append(stream)
        assert all(by_pid.values()), {pid: len(c) for pid, c in by_pid.items()}
        for round_, victim in enumerate(pids):
            survivor = next(pid for pid in by_pid if pid != victim and _alive(pid))
            os.kill(victim, signal.SIGKILL)
            await running.read_until(SERVING, 3 + round_)
            replacement = running.serving_pids()[-1]
            # The restarted worker serves: give it a moment to read its socket.
            await _echoes(by_pid[survivor], b"after restart %d" % round_)
            for conversation in by_pid.pop(victim):
                with trio.move_on_after(1):
                    await conversation.aclose()
            by_pid[replacement] = []
            # The victim's slot serves again: new sessions reach the replacement.
            for _ in range(40):
                pid, channel = await _pid_channel(pki, running.port)
                by_pid[pid].append(channel)
                if pid == replacement:
                    break
            else:
                pytest.fail(f"40 new DTLS sessions, none on the restarted worker {replacement}")
            await _echoes(by_pid[survivor], b"still %d" % round_)
        for conversations in by_pid.values():
            for conversation in conversations:
                with trio.move_on_after(1):
                    await conversation.aclose()
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
        assert running.process.returncode == 0, log


# -- 3. reloads with --metrics-port never cost availability ----------------------------


async def _http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


class _ClosedByServer(Exception):
    """The server closed (close_notify) before it answered."""


def free_tcp_pair() -> int:
    """A port P with P and P + 1 both free for TCP on 127.0.0.1 right now."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


async def _one_tls(pki: PKIFiles, port: int, metrics: int) -> None:
    stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
    await stream.send_all(b"x")
    reply = await stream.receive_some()
    await stream.aclose()
    if not reply:
        raise _ClosedByServer
    assert reply == b"x"


async def _one_dtls(pki: PKIFiles, port: int, metrics: int) -> None:
    # Cut mid-handshake by a drain, a DTLS client hears nothing (UDP): its
    # handshake times out (HandshakeError, a drain ending here).
    settings = pki.client_settings(handshake_timeout=4.0)
    channel = await open_dtls_channel("127.0.0.1", port, settings=settings)
    await channel.send(b"x")
    try:
        assert await channel.receive() == b"x"
    except trio.EndOfChannel:
        raise _ClosedByServer from None
    finally:
        await channel.aclose()


async def _one_scrape_each(pki: PKIFiles, port: int, metrics: int) -> None:
    # The supervisor's one endpoint, for both workers: metrics, and ready throughout.
    for path, says in (("/metrics", b"\ntrio_tlsd_workers_scraped "), ("/readyz", b"ready")):
        reply = await _http_get(metrics, path)
        assert reply.startswith(b"HTTP/1.0 200"), (path, reply[:80])
        assert says in reply, (path, reply[:80])


# What a drain does to a connection it finds open: close_notify, or a cut
# while the handshake is still running. A client may reconnect after these,
# after a moment: an old worker may have taken a few more connections off the
# shared queue in the instant before its drain began.
_DRAIN_ENDINGS = (_ClosedByServer, HandshakeError, trio.BrokenResourceError)
_RECONNECT_PAUSE = 0.25


_ONE_OF = {"tls": _one_tls, "dtls": _one_dtls, "metrics": _one_scrape_each}


async def test_reloads_under_load_with_metrics_keep_serving(pki: PKIFiles, tmp_path: Path) -> None:
    """SIGHUP while old workers still drain (held connections, --drain-timeout 40).

    The new workers must not need the old ones' metrics listeners, nothing
    may crash, and TLS, DTLS and the supervisor's one metrics port answer
    throughout, with ``/readyz`` 200 there (an old worker told it was
    replaced stops answering its slot at once; were it told by SIGTERM, it
    would say 503). A TLS
    connection or DTLS peer that an old worker took just before its drain
    began is closed by that drain (close_notify, or a cut mid-handshake,
    which a DTLS client learns from its handshake timeout), as a drain
    promises; such a client may reconnect once, a moment later, and that
    must work.
    Nothing may time out, and every metrics request is answered.
    """
    metrics = free_tcp_pair()
    flags = [*pki_flags(pki), "--metrics-port", str(metrics), "--drain-timeout", "40"]
    async with workers(*flags) as running:
        settings = pki.client_settings()
        # Held open through the reloads: the old workers keep draining.
        held = [
            await open_tls_stream("127.0.0.1", running.port, settings=settings) for _ in range(8)
        ]
        failures: list[str] = []
        counts = dict.fromkeys(_ONE_OF, 0)

        reconnects: list[str] = []

        async def load(kind: str, done: trio.Event) -> None:
            while not done.is_set():
                for attempt in (1, 2):
                    try:
                        with trio.fail_after(10):
                            await _ONE_OF[kind](pki, running.port, metrics)
                        counts[kind] += 1
                        break
                    except _DRAIN_ENDINGS as exc:
                        if attempt == 2 or kind == "metrics":
                            failures.append(f"{kind}: {exc!r} (attempt {attempt})")
                        else:
                            reconnects.append(f"{kind}: {exc!r}")
                            await trio.sleep(_RECONNECT_PAUSE)
                    except Exception as exc:
                        failures.append(f"{kind}: {exc!r}")
                        break
                await trio.sleep(0.02)

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for kind in counts:
                nursery.start_soon(load, kind, done)
            for reload in range(3):
                await trio.sleep(1.5)
                running.process.send_signal(signal.SIGHUP)
                await running.read_until(SERVING, 4 + 2 * reload)  # a new generation of two
            await trio.sleep(1.5)
            done.set()
        assert running.process.returncode is None, running.output.decode()
        log = running.output.decode()
        assert not failures, (failures[:5], reconnects, log)
        assert min(counts.values()) > 5, (counts, reconnects)
        assert "exited unexpectedly" not in log, log
        assert "Traceback" not in log, log
        for stream in held:
            await stream.aclose()
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
        assert running.process.returncode == 0, log


# -- the restart budget, per worker slot ----------------------------------------------


def test_the_restart_budget_is_per_slot_and_doubles_its_backoff() -> None:
    budget = RestartBudget(max_restarts=3, window=60.0, backoff=0.1, max_backoff=1.0)
    assert [budget.next_delay(0, now=t) for t in (0.0, 1.0, 2.0)] == [0.1, 0.2, 0.4]
    assert budget.next_delay(0, now=3.0) is None  # slot 0 has used its three
    assert budget.next_delay(1, now=3.0) == 0.1  # slot 1 has its own
    assert budget.next_delay(0, now=60.5) == 0.4  # the first restart has left the window
