"""Scale: 10,000 idle TLS connections and 10,000 DTLS peers on one server process.

Marked ``slow`` (deselected by default; run with ``pytest -m slow`` or
``nox -s scale``); about two minutes on two cores.

The server is ``benchmarks/soak_server.py`` in its own process, so its
resident size is read alone from ``/proc/PID/status``; the clients are two
more processes (``benchmarks/soak.py hold``), one per protocol, each holding
10,000 sockets. Each client makes one full handshake and resumes its session
for the rest, which halves the handshake work on both sides. The server's
limits are raised explicitly: the defaults (``max_connections`` and
``max_peers`` 1024) would refuse connections past 1024.

Before each reading the server runs ``gc.collect()`` and glibc's
``malloc_trim(0)``: the question is whether the server still *references*
memory for closed connections, not whether the allocator has handed its
free pages back yet.
"""

from __future__ import annotations

import resource
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from soak import ServerProcess, child_env  # noqa: E402

pytestmark = pytest.mark.slow

COUNT = 10_000
# Per process: the sockets plus a margin for the interpreter's own files.
NEEDED_FDS = COUNT + 200
MiB = 2**20


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEEDED_FDS:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {NEEDED_FDS}: cannot hold {COUNT} sockets")
    if soft != resource.RLIM_INFINITY and soft < NEEDED_FDS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_line(proc: subprocess.Popen[str], seconds: float) -> str:
    """One line from *proc*'s stdout, or fail after *seconds*."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(seconds):
            raise AssertionError(f"no output from {proc.args} within {seconds:g}s")
    return proc.stdout.readline()


def hold_command(kind: str, port: int, folder: Path, count: int) -> list[str]:
    script = str(BENCHMARKS / "soak.py")
    options = ["--port", str(port), "--dir", str(folder), "--count", str(count)]
    return [sys.executable, script, "hold", kind, *options]


class Holder:
    """``soak.py hold KIND``: COUNT open connections in a child process."""

    def __init__(self, kind: str, port: int, folder: Path) -> None:
        self.proc = subprocess.Popen(
            hold_command(kind, port, folder, COUNT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )

    def wait_open(self) -> None:
        assert read_line(self.proc, 90).split() == ["OPEN", str(COUNT)]

    def close_all(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        assert read_line(self.proc, 60).split() == ["CLOSED", str(COUNT)]
        self.proc.stdin.close()
        self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    raise_fd_limit()
    write_dev_pki(tmp_path, make_dev_pki())
    limit = str(COUNT + 100)
    proc = ServerProcess(
        tmp_path,
        *("--idle-timeout", "0", "--handshake-timeout", "60"),
        *("--max-connections", limit, "--max-peers", limit),
    )
    try:
        yield proc
    finally:
        proc.stop()


def wait_until(server: ServerProcess, done: Any, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        stats = server.sample()
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def test_10k_tls_and_10k_dtls_idle_then_closed(server: ServerProcess, tmp_path: Path) -> None:
    # Warm-up: a few of each kind, so one-off allocations (thread pool,
    # session caches, imports) are in the "before" figure.
    for kind in ("tls", "dtls"):
        warm = subprocess.run(
            hold_command(kind, server.port, tmp_path, 20),
            input="close\n",
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert warm.stdout.split() == ["OPEN", "20", "CLOSED", "20"], warm.stderr
    wait_until(server, lambda s: s["tls_open"] == 0 and s["dtls_peer_table"] == 0, 10)
    before = server.sample("trim")

    holders = [Holder("tls", server.port, tmp_path)]
    try:
        holders[0].wait_open()
        with_tls = server.sample("trim")
        holders.append(Holder("dtls", server.port, tmp_path))
        holders[1].wait_open()
        peak = server.sample("trim")
        assert peak["tls_open"] == COUNT
        assert peak["dtls_peer_table"] == COUNT
        assert peak["fds"] >= before["fds"] + COUNT  # one TCP socket per connection

        for holder in holders:
            holder.close_all()
    finally:
        for holder in holders:
            holder.kill()
    closed = wait_until(server, lambda s: s["tls_open"] == 0 and s["dtls_peer_table"] == 0, 60)
    assert closed["tls_open"] == 0
    assert closed["dtls_peer_table"] == 0
    after = server.sample("trim")

    tls_each = (with_tls["rss_mib"] - before["rss_mib"]) * MiB / COUNT
    dtls_each = (peak["rss_mib"] - with_tls["rss_mib"]) * MiB / COUNT
    growth = peak["rss_mib"] - before["rss_mib"]
    residual = after["rss_mib"] - before["rss_mib"]
    print(
        f"\nserver RSS: before {before['rss_mib']:.1f} MiB, "
        f"{COUNT} TLS {with_tls['rss_mib']:.1f} MiB ({tls_each / 1024:.1f} KiB each), "
        f"+{COUNT} DTLS {peak['rss_mib']:.1f} MiB ({dtls_each / 1024:.1f} KiB each), "
        f"all closed {after['rss_mib']:.1f} MiB ({residual:+.1f} MiB, "
        f"{100 * residual / growth:.1f} % of the growth); "
        f"tasks {before['tasks']} / {peak['tasks']} / {after['tasks']}, "
        f"fds {before['fds']} / {peak['fds']} / {after['fds']}"
    )
    # Every connection and peer task is gone, and so is every socket.
    assert after["tasks"] == before["tasks"]
    assert after["fds"] == before["fds"]
    # Memory comes back: what is left is under 10 % of what 20,000 took.
    assert residual <= 0.10 * growth
