"""W9 of the benchmark suite: full TLS handshakes/s with ``serve --workers 1`` and ``2``.

Both servers run ``trio-tlsd serve --tls-only`` on a free port and take
turns (1 2 1 2 ...) against 32 clients spread over at least two load
processes. Nothing is pinned here: the workers need both cores, and the
load client shares them, which is why the ratio stays well under 2 on a
two-core machine.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trio_tls_dtls.cli.bench import BenchConfig, run_bench

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 30.0


class WorkersServer:
    """`trio-tlsd serve --workers N --tls-only` on a fixed free port; stopped by its PID."""

    def __init__(self, count: int, pki: Path) -> None:
        self.kind = f"ours-tls-workers{count}"
        self.port = _free_port()
        argv = [
            sys.executable, "-m", "trio_tls_dtls", "--log-level", "warning", "serve",
            "--tls-only", "--host", "127.0.0.1", "--port", str(self.port),
            "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"),
            "--workers", str(count), "--max-connections", "4096",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, cwd=pki)
        assert self.proc.stderr is not None
        # Each worker announces itself once it listens. A deadline, because a
        # worker that never comes up must fail W9, not hang the whole suite.
        fd, seen, deadline = self.proc.stderr.fileno(), b"", time.monotonic() + STARTUP_TIMEOUT
        while seen.count(b": serving ") < count:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0]
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                self.stop()
                why = "exited" if ready else f"not serving after {STARTUP_TIMEOUT:g} s"
                last = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"{self.kind} did not start ({why}; last line: {last[0]})")
            seen += chunk

    def cpu_seconds(self) -> float:
        """CPU of the parent and its workers (the workers do the work)."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the parent drains its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        return int(tcp.getsockname()[1])


def run_scaling(pki: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """W9: full TLS handshakes/s with `--workers 1` and `--workers 2`, taking turns."""
    print("W9: handshakes/s, serve --workers 1 vs --workers 2 (32 clients, unpinned)", flush=True)
    turns: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    running = []
    try:
        try:
            for n in (1, 2):
                running.append((n, WorkersServer(n, pki)))
        except RuntimeError as exc:
            print(f"  W9 not measured: {exc}", flush=True)
            return []
        for turn in range(opts.rounds + 1):
            for n, server in running:
                cfg = BenchConfig(
                    proto="tls",
                    mode="handshake",
                    host="127.0.0.1",
                    port=server.port,
                    clients=32,
                    duration=opts.warmup if turn == 0 else opts.duration,
                    procs=max(opts.procs, 2),
                    ca_file=pki / "ca.pem",
                    servername="localhost",
                )
                before = server.cpu_seconds()
                report = run_bench(cfg, check=False)
                cpu = server.cpu_seconds() - before
                if turn == 0:
                    continue
                s = report.sizes[0]
                turns[n].append(
                    {"rate": s.ops_per_s, "ops": s.ops, "errors": s.errors, "cpu": cpu,
                     "p50": s.latency_us["p50"], "p99": s.latency_us["p99"]}
                )  # fmt: skip
                print(
                    f"  turn {turn} workers {n}: {s.ops_per_s:>7,.0f}/s"
                    f"  cpu {cpu * 1e6 / max(s.ops, 1):>7,.1f} µs/op  errors {s.errors}",
                    flush=True,
                )
    finally:
        for _, server in running:
            server.stop()
    rows = []
    for n, measured in turns.items():
        ops = sum(t["ops"] for t in measured)
        cpu = sum(t["cpu"] for t in measured)
        rows.append(
            {
                "workload": "W9", "title": "handshakes/s by --workers", "mode": "handshake",
                "proto": "tls", "size": 0, "peer": "ours", "server": f"ours-tls-workers{n}",
                "status": "ok", "ours": True, "python": False,
                "library": "", "negotiated": "",
                "rate": statistics.median(t["rate"] for t in measured) if measured else None,
                "mb_per_s": None, "ops": ops, "resumed": 0,
                "errors": sum(t["errors"] for t in measured),
                "cpu_us_per_op": round(cpu / ops * 1e6, 1) if ops else None,
                "p50_us": statistics.median(t["p50"] for t in measured) if measured else None,
                "p99_us": statistics.median(t["p99"] for t in measured) if measured else None,
            }
        )  # fmt: skip
    if rows[0]["rate"] and rows[1]["rate"]:
        rows[1]["rate_vs_one_worker"] = round(rows[1]["rate"] / rows[0]["rate"], 2)
    return rows
