"""The benchmark suite: ours beside every peer, against the same load client, in one run.

    python benchmarks/suite.py [--quick] [--rounds N] [--duration S] [--only W1,W3] [--update-docs]
    nox -s bench [-- --quick]

The peers (``benchmarks/peers.py``): our :class:`~trio_tls_dtls.Service`,
trio's ``SSLStream`` and ``DTLSEndpoint``, asyncio with stdlib ``ssl``,
asyncio on uvloop, Go crypto/tls (``benchmarks/go``, built when ``go`` is
on PATH), plain trio TCP/UDP echo, and OpenSSL's own cost with no sockets
(``benchmarks/floor.py``: on pyOpenSSL's bundled OpenSSL 4.0 as ours uses
it, on the system's OpenSSL 3.0 as stdlib ``ssl`` uses it, and on 4.0 with
a client that offers only X25519, as the stdlib peers negotiate).

Each server runs in its own process, pinned with ``taskset`` to one CPU
while the load client (``trio-tlsd bench``, in this process) runs on the
other, so its CPU time can be read from ``/proc/PID/stat`` before and after
each turn: on a small machine, server CPU per operation is the stable
figure, while wall-clock rates mostly measure the Python load client.
Within a workload the servers take turns (A B C ... A B C), each turn a
fixed duration after an uncounted warm-up turn, so a noisy neighbour hurts
them alike; rates and percentiles are the median turn, CPU per operation is
total CPU over total operations. A floor takes its turn like a server and
reports the CPU of its server end (it has no rate or latency of its own).

W7 (memory) opens 1,000 idle TLS connections / DTLS peers and reads the
server's RSS before and after, after a warm-up that made the same kind of
connection a few times (so one-off allocations do not count). W9 runs
``trio-tlsd serve --workers 1`` and ``--workers 2``, unpinned.

Writes ``benchmarks/results/latest.json`` and ``latest.md``; with
``--update-docs`` also the tables in docs/performance.rst and, if matplotlib
is installed, docs/_static/bench-latest.png.
"""

from __future__ import annotations

import argparse
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

# Run as a script, this file's folder is on sys.path: its siblings import plainly.
from peers import PEERS, Peer, Pinning, Server, library, probe, unavailable
from suite_report import add_ratios, targets, write_outputs

from trio_tls_dtls.cli.bench import BenchConfig, run_bench
from trio_tls_dtls.cli.bench.command import preflight
from trio_tls_dtls.cli.bench.load import open_connection
from trio_tls_dtls.cli.bench.report import machine_description
from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki

HERE = Path(__file__).resolve().parent


@dataclass
class Context:
    """What every workload of one run shares."""

    pki: Path
    opts: argparse.Namespace
    pinning: Pinning
    skipped: dict[str, str]
    go_binary: Path | None
    go_version: str


@contextmanager
def servers(kinds: Sequence[str], ctx: Context, *, mtls: bool = False) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for kind in kinds:
            started.append(
                Server(kind, ctx.pki, mtls=mtls, pinning=ctx.pinning, go_binary=ctx.go_binary)
            )
        yield started
    finally:
        for server in started:
            server.stop()


# -- workloads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    proto: str  # "tls" or "dtls"
    mode: str
    clients: int
    sizes: tuple[int, ...] = (64,)
    mtls: bool = False
    resume: bool = False

    def kind_for(self, peer: Peer) -> str | None:
        """The peer's server for this workload, or None if it cannot do it."""
        kind = peer.kind(self.proto)
        if kind is None or (self.mode == "handshake" and not peer.handshakes):
            return None
        if self.mode != "handshake" and not peer.records:
            return None
        return kind


WORKLOADS = [
    Workload("W1", "full TLS 1.3 handshakes, ECDSA P-256", "tls", "handshake", 32),
    Workload("W2", "mutual TLS handshakes", "tls", "handshake", 32, mtls=True),
    Workload("W3", "TLS round trips, 64 B", "tls", "echo", 64),
    Workload("W4", "bulk 16 KiB messages, window 4", "tls", "bulk", 8, sizes=(16384,)),
    Workload("W5", "DTLS 1.2 handshakes", "dtls", "handshake", 32),
    Workload("W6", "DTLS round trips", "dtls", "echo", 64, sizes=(64, 1000)),
    Workload("W8", "resumed TLS handshakes", "tls", "handshake", 32, resume=True),
]


def client_proto(kind: str, proto: str) -> str:
    return {"tcp": "tcp", "udp": "udp"}.get(kind, proto)


@dataclass
class Measured:
    """One server's turns in one workload at one size."""

    server: str
    rates: list[float] = field(default_factory=list)
    mb_per_s: list[float] = field(default_factory=list)
    ops: int = 0
    bytes: int = 0
    errors: int = 0
    resumed: int = 0
    cpu: float = 0.0
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        per_op = self.cpu / self.ops * 1e6 if self.ops else None
        return {
            "server": self.server,
            "rate": median(self.rates),
            "rates": self.rates,
            "mb_per_s": median(self.mb_per_s),
            "ops": self.ops,
            "errors": self.errors,
            "resumed": self.resumed,
            "cpu_seconds": round(self.cpu, 3),
            "cpu_us_per_op": None if per_op is None else round(per_op, 1),
            "p50_us": median(self.p50),
            "p99_us": median(self.p99),
        }


def bench_config(w: Workload, server: Server, ctx: Context, turn: int) -> BenchConfig:
    pki, opts = ctx.pki, ctx.opts
    return BenchConfig(
        proto=client_proto(server.kind, w.proto),  # type: ignore[arg-type]
        mode=w.mode,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=server.port,
        clients=w.clients,
        sizes=w.sizes,
        duration=opts.warmup if turn == 0 else opts.duration,
        procs=opts.procs,
        ca_file=pki / "ca.pem",
        cert_file=pki / "client.pem" if w.mtls else None,
        key_file=pki / "client.key" if w.mtls else None,
        servername="localhost",
        resume=w.resume,
    )


def one_turn(w: Workload, server: Server, size: int, ctx: Context, turn: int) -> dict[str, Any]:
    """One turn of one server at one size: ops, server CPU, and what the client saw."""
    seconds = ctx.opts.warmup if turn == 0 else ctx.opts.duration
    if server.is_floor:
        mode = "handshake" if w.mode == "handshake" else "echo"
        got = server.command(
            cmd="run", proto=w.proto, mode=mode, size=size, seconds=seconds, resume=w.resume
        )
        got["resumed"] = got["ops"] if got.get("resumed") else 0
        got["negotiated"] = f"{got['protocol']} {got.get('group') or '?'}"
        return got
    cfg = replace(bench_config(w, server, ctx, turn), sizes=(size,))
    before = server.cpu_seconds()
    report = run_bench(cfg, check=False)
    cpu = server.cpu_seconds() - before
    s = report.sizes[0]
    return {
        "ops": s.ops,
        "cpu": cpu,
        "bytes": int(s.mb_per_s * s.seconds * 1e6),
        "errors": s.errors,
        "resumed": s.resumed,
        "rate": s.ops_per_s,
        "mb_per_s": s.mb_per_s,
        "p50": s.latency_us["p50"],
        "p99": s.latency_us["p99"],
    }


def run_workload(w: Workload, ctx: Context) -> list[dict[str, Any]]:
    plan = [(peer, w.kind_for(peer)) for peer in PEERS]
    kinds = [k for _, k in plan if k is not None and k not in ctx.skipped]
    print(f"{w.name}: {w.title} ({w.clients} clients; {', '.join(kinds)})", flush=True)
    measured = {(k, size): Measured(k) for k in kinds for size in w.sizes}
    negotiated: dict[str, str] = {}
    with servers(kinds, ctx, mtls=w.mtls) as running:
        for server in running:
            if not server.is_floor:
                cfg = bench_config(w, server, ctx, 0)
                if server.kind in ("tcp", "udp"):
                    negotiated[server.kind] = "no TLS"
                else:
                    negotiated[server.kind] = probe(w.proto, server.port, cfg.client_settings())
                preflight(cfg)
        for turn in range(ctx.opts.rounds + 1):  # turn 0 is a short warm-up, not counted
            for server in running:
                for size in w.sizes:
                    got = one_turn(w, server, size, ctx, turn)
                    if turn == 0:
                        continue
                    m = measured[(server.kind, size)]
                    m.ops += got["ops"]
                    m.cpu += got["cpu"]
                    m.bytes += got["bytes"]
                    m.errors += got.get("errors", 0)
                    m.resumed += got["resumed"]
                    if "rate" in got:
                        m.rates.append(got["rate"])
                        m.mb_per_s.append(got["mb_per_s"])
                        m.p50.append(got["p50"])
                        m.p99.append(got["p99"])
                    else:
                        negotiated[server.kind] = got["negotiated"]
                    rate = f"{got['rate']:>9,.0f}/s" if "rate" in got else f"{'in memory':>11}"
                    what = "" if w.mode == "handshake" else f" {size:>5} B"
                    print(
                        f"  turn {turn} {server.kind:>12}{what}: {rate}"
                        f"  cpu {got['cpu'] * 1e6 / max(got['ops'], 1):>7,.1f} µs/op"
                        f"  errors {got.get('errors', 0)}",
                        flush=True,
                    )
    rows = []
    for size in w.sizes:
        group = []
        for peer, kind in plan:
            row: dict[str, Any] = {"server": kind, "status": "ok"}
            if kind is None:
                row["status"] = "n/a"
            elif kind in ctx.skipped:
                row["status"] = "skipped"
            else:
                row = measured[(kind, size)].row() | {"status": "ok"}
                row["library"] = library(kind, ctx.go_version)
                row["negotiated"] = negotiated.get(kind, "")
            row.update(
                workload=w.name,
                title=w.title,
                proto=w.proto,
                mode=w.mode,
                size=size,
                peer=peer.key,
                python=peer.python,
                ours=peer.key == "ours",
            )
            group.append(row)
        add_ratios(group)
        rows += group
    return rows


# -- W7: memory per idle connection ---------------------------------------------------


async def _hold_connections(cfg: BenchConfig, n: int, measure: Any) -> int:
    """Open *n* connections (one echo each), call *measure*, close them; failures."""
    settings = cfg.client_settings()
    conns: list[Any] = []
    failures = 0
    limit = trio.Semaphore(32)

    async def one() -> None:
        nonlocal failures
        async with limit:
            try:
                with trio.fail_after(30):
                    conn = await open_connection(cfg, settings)
                    await conn.round_trip(b"hello")
                conns.append(conn)
            except Exception:
                failures += 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    await trio.sleep(1.0)  # let the servers settle into idle
    measure()
    with trio.CancelScope(shield=True):
        for conn in conns:
            with trio.move_on_after(1):
                await conn.aclose()
    return failures


def memory_of(kind: str, proto: str, ctx: Context) -> dict[str, Any]:
    n = ctx.opts.idle
    with servers([kind], ctx) as (server,):
        if server.is_floor:
            return server.command(cmd="memory", proto=proto, count=n) | {"failures": 0}
        cfg = BenchConfig(
            proto=client_proto(kind, proto),  # type: ignore[arg-type]
            mode="echo",
            host="127.0.0.1",
            port=server.port,
            clients=1,
            ca_file=ctx.pki / "ca.pem",
            servername="localhost",
        )
        # Warm-up: the first connections allocate one-off state (thread
        # pool, caches); that is not per-connection cost.
        trio.run(_hold_connections, cfg, 50, lambda: None)
        time.sleep(0.5)
        before = server.rss_bytes()
        after = [0]

        def measure(server: Server = server, after: list[int] = after) -> None:
            after[0] = server.rss_bytes()

        failures = trio.run(_hold_connections, cfg, n, measure)
    held = n - failures
    return {
        "connections": held,
        "failures": failures,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after[0] / 2**20, 1),
        "kib_per_connection": round((after[0] - before) / held / 1024, 1) if held else None,
    }


def run_memory(ctx: Context) -> list[dict[str, Any]]:
    print(f"W7: server RSS per idle connection ({ctx.opts.idle} per server)", flush=True)
    rows = []
    for proto in ("tls", "dtls"):
        group = []
        for peer in PEERS:
            kind = peer.kind(proto)
            row: dict[str, Any] = {"server": kind, "status": "ok"}
            # A plain UDP server keeps nothing per peer: there is nothing to measure.
            if kind is None or kind == "udp" or not peer.memory:
                row["status"] = "n/a"
            elif kind in ctx.skipped:
                row["status"] = "skipped"
            else:
                row |= memory_of(kind, proto, ctx)
                row["library"] = library(kind, ctx.go_version)
                print(
                    f"  {proto} {kind:>12}: {row['kib_per_connection'] or 0:6.1f} KiB per idle "
                    f"connection ({row['failures']} failed)",
                    flush=True,
                )
            row.update(
                workload="W7", title="RSS per idle connection", proto=proto, mode="memory",
                size=0, peer=peer.key, python=peer.python, ours=peer.key == "ours",
            )  # fmt: skip
            group.append(row)
        add_ratios(group, key="kib_per_connection")
        rows += group
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="trio-tls-dtls benchmark suite: ours beside every peer (W1..W9)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, 200 idle conns")
    parser.add_argument("--rounds", type=int, default=2, help="turns per server (default: 2)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per turn (3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds (0.5)")
    parser.add_argument("--procs", type=int, default=1, help="bench client processes (1)")
    parser.add_argument("--idle", type=int, default=1000, help="W7 idle connections (1000)")
    parser.add_argument("--only", default="", help="comma-separated workloads to run, e.g. W1,W7")
    parser.add_argument("--server-cpu", type=int, help="CPU for the servers (default: the first)")
    parser.add_argument("--load-cpu", type=int, help="CPU for the load client (default: second)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the docs tables")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.idle = 1, 1.0, 200
    only = {w.strip().upper() for w in opts.only.split(",") if w.strip()}
    pinning = Pinning(opts.server_cpu, opts.load_cpu)
    print(pinning.describe(), flush=True)
    machine = machine_description() | {"stdlib_ssl": ssl.OPENSSL_VERSION}
    run = " ".join(["benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-bench-") as tmp:
        pki = Path(tmp)
        write_dev_pki(pki, make_dev_pki(key_type="ec"))
        skipped, go_binary, go_version = unavailable(pki)
        for kind, why in skipped.items():
            print(f"{kind} peer skipped: {why}", flush=True)
        machine["go"] = go_version or "not available"
        ctx = Context(pki, opts, pinning, skipped, go_binary, go_version)
        pinning.pin_load()
        try:
            for w in WORKLOADS:
                if not only or w.name in only:
                    rows += run_workload(w, ctx)
            if not only or "W7" in only:
                rows += run_memory(ctx)
        finally:
            pinning.unpin()
        if not only or "W9" in only:
            from scaling import run_scaling

            rows += run_scaling(pki, opts)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run": run.strip(),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "settings": {
            "rounds": opts.rounds,
            "duration": opts.duration,
            "procs": opts.procs,
            "idle": opts.idle,
            "pinning": pinning.describe(),
            "skipped": skipped,
            "platform": platform.platform(),
        },
        "rows": rows,
        "targets": targets(rows),
    }
    write_outputs(result, opts.out, opts.update_docs)
    print(f"suite took {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
