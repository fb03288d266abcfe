"""Our server at two commits, side by side: server CPU per operation, alternated, pinned.

    python benchmarks/compare_commits.py BASE [HEAD] [--rounds N] [--duration S]

Checks that a change (a restructuring, say) costs no CPU per operation. BASE
and HEAD are git revisions (HEAD defaults to the working tree). Each is
checked out into a temporary worktree and serves with *its own*
``benchmarks/servers.py`` and package (``PYTHONPATH`` set to that tree), so
both run exactly the code of their commit; the load is the current tree's
``trio-tlsd bench`` load generator, the same for both.

The servers take turns (BASE HEAD BASE HEAD ...), each turn a fixed duration.
W7 (memory per idle connection) is measured once per side, as the suite
does (500 connections). Servers run pinned to CPU 0 and the load to CPU 1 (``taskset`` semantics via
``sched_setaffinity``), and server CPU comes from ``/proc/PID/stat``, so the
figure is the server's own work per operation, not what the shared machine
did meanwhile. Prints one row per workload: µs/op for each side and the ratio
HEAD/BASE (above 1.05 is a regression beyond the 5 % the layout issue allows).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU, LOAD_CPU = 0, 1
SERVER_CPUS = {SERVER_CPU}  # offload_modes.py --cpus widens it


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # the servers.py kind
    proto: str
    mode: str
    clients: int
    size: int = 64
    mtls: bool = False
    resume: bool = False


WORKLOADS = (
    Workload("W1 TLS handshakes", "ours-tls", "tls", "handshake", 32),
    Workload("W2 mutual TLS handshakes", "ours-tls", "tls", "handshake", 32, mtls=True),
    Workload("W3 TLS echo 64 B", "ours-tls", "tls", "echo", 64),
    Workload("W4 TLS bulk 16 KiB", "ours-tls", "tls", "bulk", 8, size=16384),
    Workload("W5 DTLS handshakes", "ours-dtls", "dtls", "handshake", 32),
    Workload("W6 DTLS echo 64 B", "ours-dtls", "dtls", "echo", 64),
    Workload("W6 DTLS echo 1000 B", "ours-dtls", "dtls", "echo", 64, size=1000),
    Workload("W7 TLS idle connection", "ours-tls", "tls", "memory", 500),
    Workload("W7 DTLS idle peer", "ours-dtls", "dtls", "memory", 500),
    Workload("W8 resumed TLS handshakes", "ours-tls", "tls", "handshake", 32, resume=True),
)


class TreeServer:
    """servers.py KIND from *tree*, run with that tree's package, pinned to SERVER_CPUS."""

    def __init__(self, tree: Path, kind: str, pki: Path, mtls: bool) -> None:
        argv = [sys.executable, str(tree / "benchmarks" / "servers.py"), kind, str(pki)]
        argv += ["--mtls"] if mtls else []
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
        )
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        if len(words) != 2 or words[0] != "READY":
            self.stop()
            raise RuntimeError(f"{kind} from {tree} did not start")
        self.port = int(words[1])

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def checkout(revision: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), revision],
        check=True,
    )
    return into


def measure_servers(
    w: Workload, specs: dict[str, tuple[Path, str]], pki: Path, rounds: int, duration: float
) -> dict[str, tuple[float, int]]:
    """Server CPU µs per operation and operations, by label; *specs*: label -> (tree, kind).

    The servers take turns (A B C ... A B C), after an uncounted warm-up turn.
    """
    from trio_tls_dtls.cli.bench import BenchConfig, run_bench

    servers = {label: TreeServer(tree, kind, pki, w.mtls) for label, (tree, kind) in specs.items()}
    cpu = dict.fromkeys(servers, 0.0)
    ops = dict.fromkeys(servers, 0)
    try:
        for turn in range(rounds + 1):  # turn 0 warms up and is not counted
            for label, server in servers.items():
                cfg = BenchConfig(
                    proto=w.proto,  # type: ignore[arg-type]
                    mode=w.mode,  # type: ignore[arg-type]
                    host="127.0.0.1",
                    port=server.port,
                    clients=w.clients,
                    sizes=(w.size,),
                    duration=1.0 if turn == 0 else duration,
                    ca_file=pki / "ca.pem",
                    cert_file=pki / "client.pem" if w.mtls else None,
                    key_file=pki / "client.key" if w.mtls else None,
                    servername="localhost",
                    resume=w.resume,
                )
                before = server.cpu_seconds()
                report = run_bench(replace(cfg), check=turn == 0)
                spent = server.cpu_seconds() - before
                if turn:
                    cpu[label] += spent
                    ops[label] += report.sizes[0].ops
    finally:
        for server in servers.values():
            server.stop()
    return {
        label: (cpu[label] / ops[label] * 1e6 if ops[label] else float("nan"), ops[label])
        for label in cpu
    }


def memory_per_connection(w: Workload, tree: Path, pki: Path) -> float:
    """W7 as the suite measures it: server RSS growth per idle connection, in KiB."""
    import trio
    from suite import _hold_connections

    from trio_tls_dtls.cli.bench import BenchConfig

    server = TreeServer(tree, w.kind, pki, w.mtls)
    try:
        cfg = BenchConfig(
            proto=w.proto,  # type: ignore[arg-type]
            mode="echo",
            host="127.0.0.1",
            port=server.port,
            clients=1,
            ca_file=pki / "ca.pem",
            servername="localhost",
        )
        trio.run(_hold_connections, cfg, 50, lambda: None)  # warm-up: one-off state
        before = server.rss_bytes()
        after = [0]
        failures = trio.run(
            _hold_connections, cfg, w.clients, lambda: after.__setitem__(0, server.rss_bytes())
        )
    finally:
        server.stop()
    return (after[0] - before) / (w.clients - failures) / 1024


def measure(w: Workload, trees: dict[str, Path], pki: Path, rounds: int, duration: float) -> None:
    if w.mode == "memory":
        kib = {label: memory_per_connection(w, tree, pki) for label, tree in trees.items()}
        print(
            f"{w.name:<26} base {kib['base']:8.1f} KiB     head {kib['head']:8.1f} KiB     "
            f"head/base {kib['head'] / kib['base']:5.2f}   ({w.clients} connections each)",
            flush=True,
        )
        return
    specs = {label: (tree, w.kind) for label, tree in trees.items()}
    per = measure_servers(w, specs, pki, rounds, duration)
    (base, base_ops), (head, head_ops) = per["base"], per["head"]
    print(
        f"{w.name:<26} base {base:8.1f} µs/op   head {head:8.1f} µs/op   "
        f"head/base {head / base:5.2f}   ({base_ops:,} / {head_ops:,} ops)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="git revision to compare against")
    parser.add_argument("head", nargs="?", help="git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per server (3)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per turn (4)")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    opts = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CPU})

    from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        trees = {"base": checkout(opts.base, folder / "base")}
        trees["head"] = checkout(opts.head, folder / "head") if opts.head else ROOT
        pki = folder / "pki"
        write_dev_pki(pki, make_dev_pki())
        try:
            for w in WORKLOADS:
                if opts.only is None or opts.only in w.name:
                    measure(w, trees, pki, opts.rounds, opts.duration)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                        check=False,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
