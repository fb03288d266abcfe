"""The benchmark suite: our servers beside trio's own, against the same bench client.

    python benchmarks/suite.py [--quick] [--rounds N] [--duration S] [--update-docs]
    nox -s bench [-- --quick]

Each server runs in its own process (``benchmarks/servers.py``), so its CPU
time can be read from ``/proc/PID/stat`` before and after each run: on a
small shared machine, server CPU per operation is the stable figure, while
wall-clock rates mostly measure the Python load client. Within a workload
the servers take turns (A B C A B C ...), each turn a fixed duration, so a
noisy neighbour hurts them alike; rates are the median turn, CPU per
operation is total CPU over total operations.

W7 (memory) opens 1,000 idle TLS connections / DTLS peers and reads the
server's RSS before and after, after a warm-up that made the same kind of
connection a few times (so one-off allocations do not count).

Writes ``benchmarks/results/latest.json`` and ``latest.md``; with
``--update-docs`` also the table in docs/performance.rst and, if matplotlib
is installed, docs/_static/bench-latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from trio_tls_dtls.cli.bench import BenchConfig, run_bench
from trio_tls_dtls.cli.bench.command import preflight
from trio_tls_dtls.cli.bench.load import open_connection
from trio_tls_dtls.cli.bench.report import machine_description
from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = HERE / "servers.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DOCS_PAGE = ROOT / "docs" / "performance.rst"
DOCS_PLOT = ROOT / "docs" / "_static" / "bench-latest.png"
BEGIN, END = ".. BEGIN SUITE RESULTS", ".. END SUITE RESULTS"


# -- server processes -----------------------------------------------------------


class Server:
    """One echo server in a child process we started; stopped by its PID."""

    def __init__(self, kind: str, pki: Path, *, mtls: bool = False) -> None:
        self.kind = kind
        argv = [sys.executable, str(SERVERS), kind, str(pki)] + (["--mtls"] if mtls else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"server {kind} did not start (exit {self.proc.returncode})")
        self.port = int(line[1])

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (all threads) so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def servers(kinds: Sequence[str], pki: Path, *, mtls: bool = False) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for kind in kinds:
            started.append(Server(kind, pki, mtls=mtls))
        yield started
    finally:
        for server in started:
            server.stop()


# -- workloads ---------------------------------------------------------------------

# Which client protocol talks to which server.
CLIENT_PROTO = {
    "ours-tls": "tls",
    "ours-tls-inline": "tls",
    "ours-dtls-inline": "dtls",
    "trio-tls": "tls",
    "tcp": "tcp",
    "ours-dtls": "dtls",
    "trio-dtls": "dtls",
    "udp": "udp",
}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    mode: str
    clients: int
    servers: tuple[str, ...]
    sizes: tuple[int, ...] = (64,)
    mtls: bool = False
    resume: bool = False


WORKLOADS = [
    Workload(
        "W1", "full TLS 1.3 handshakes, ECDSA P-256", "handshake", 32, ("ours-tls", "trio-tls")
    ),
    Workload("W2", "mutual TLS handshakes", "handshake", 32, ("ours-tls", "trio-tls"), mtls=True),
    Workload("W3", "TLS round trips, 64 B", "echo", 64, ("ours-tls", "trio-tls", "tcp")),
    Workload(
        "W4",
        "bulk 16 KiB messages, window 4",
        "bulk",
        8,
        ("ours-tls", "trio-tls", "tcp"),
        sizes=(16384,),
    ),
    Workload("W5", "DTLS 1.2 handshakes", "handshake", 32, ("ours-dtls", "trio-dtls")),
    Workload(
        "W6", "DTLS round trips", "echo", 64, ("ours-dtls", "trio-dtls", "udp"), sizes=(64, 1000)
    ),
    Workload(
        "W8", "resumed TLS handshakes", "handshake", 32, ("ours-tls", "trio-tls"), resume=True
    ),
]


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

    @property
    def cpu_us_per_op(self) -> float | None:
        return self.cpu / self.ops * 1e6 if self.ops else None

    @property
    def cpu_s_per_mb(self) -> float | None:
        return self.cpu / (self.bytes / 1e6) if self.bytes else None

    def row(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "rate": statistics.median(self.rates) if self.rates else 0.0,
            "rates": self.rates,
            "mb_per_s": statistics.median(self.mb_per_s) if self.mb_per_s else 0.0,
            "ops": self.ops,
            "errors": self.errors,
            "resumed": self.resumed,
            "cpu_seconds": round(self.cpu, 3),
            "cpu_us_per_op": None if self.cpu_us_per_op is None else round(self.cpu_us_per_op, 1),
            "cpu_s_per_mb": None if self.cpu_s_per_mb is None else round(self.cpu_s_per_mb, 4),
            "p50_us": statistics.median(self.p50) if self.p50 else 0.0,
            "p99_us": statistics.median(self.p99) if self.p99 else 0.0,
        }


def run_workload(w: Workload, pki: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"{w.name}: {w.title} ({w.clients} clients, {', '.join(w.servers)})", flush=True)
    measured = {(s, size): Measured(s) for s in w.servers for size in w.sizes}
    with servers(w.servers, pki, mtls=w.mtls) as running:
        for turn in range(opts.rounds + 1):  # turn 0 is a short warm-up, not counted
            for server in running:
                cfg = BenchConfig(
                    proto=CLIENT_PROTO[server.kind],  # type: ignore[arg-type]
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
                if turn == 0:
                    preflight(cfg)
                for size in w.sizes:
                    one = replace(cfg, sizes=(size,))
                    before = server.cpu_seconds()
                    report = run_bench(one, check=False)
                    cpu = server.cpu_seconds() - before
                    if turn == 0:
                        continue
                    s = report.sizes[0]
                    m = measured[(server.kind, size)]
                    m.rates.append(s.ops_per_s)
                    m.mb_per_s.append(s.mb_per_s)
                    m.ops += s.ops
                    m.bytes += int(s.mb_per_s * s.seconds * 1e6)
                    m.errors += s.errors
                    m.resumed += s.resumed
                    m.cpu += cpu
                    m.p50.append(s.latency_us["p50"])
                    m.p99.append(s.latency_us["p99"])
                    print(
                        f"  turn {turn} {server.kind:>9} size {size:>5}: "
                        f"{s.ops_per_s:>9,.0f}/s  cpu {cpu * 1e6 / max(s.ops, 1):>7,.1f} µs/op"
                        f"  errors {s.errors}",
                        flush=True,
                    )
    rows = []
    for size in w.sizes:
        group = {s: measured[(s, size)].row() for s in w.servers}
        ours = next(s for s in w.servers if s.startswith("ours"))
        trio_ref = next(s for s in w.servers if s.startswith("trio"))
        ceiling = next((s for s in w.servers if s in ("tcp", "udp")), None)
        for server, row in group.items():
            row.update(workload=w.name, title=w.title, mode=w.mode, size=size)
            row["cpu_vs_trio"] = _ratio(row["cpu_us_per_op"], group[trio_ref]["cpu_us_per_op"])
            row["rate_vs_trio"] = _ratio(row["rate"], group[trio_ref]["rate"])
            if ceiling is not None:
                row["cpu_vs_ceiling"] = _ratio(
                    row["cpu_us_per_op"], group[ceiling]["cpu_us_per_op"]
                )
            row["ours"] = server == ours
            rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


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


def run_memory(pki: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    n = opts.idle
    print(f"W7: server RSS per idle connection ({n} TLS connections, {n} DTLS peers)", flush=True)
    rows = []
    for kind in ("ours-tls", "trio-tls", "ours-dtls", "trio-dtls"):
        with servers([kind], pki) as (server,):
            cfg = BenchConfig(
                proto=CLIENT_PROTO[kind],  # type: ignore[arg-type]
                mode="echo",
                host="127.0.0.1",
                port=server.port,
                clients=1,
                ca_file=pki / "ca.pem",
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
            per = (after[0] - before) / held / 1024 if held else 0.0
            print(f"  {kind:>9}: {per:6.1f} KiB per idle connection ({failures} failed)")
            rows.append(
                {
                    "workload": "W7",
                    "title": "RSS per idle connection",
                    "server": kind,
                    "connections": held,
                    "failures": failures,
                    "rss_before_mib": round(before / 2**20, 1),
                    "rss_after_mib": round(after[0] / 2**20, 1),
                    "kib_per_connection": round(per, 1),
                    "ours": kind.startswith("ours"),
                }
            )
    return rows


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
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=pki)
        assert self.proc.stderr is not None
        seen = 0
        while seen < count:  # each worker announces itself once it listens
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"{self.kind} did not start (exit {self.proc.poll()})")
            seen += ": serving " in line

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
    import socket

    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        return int(tcp.getsockname()[1])


def run_scaling(pki: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """W9: full TLS handshakes/s with `--workers 1` and `--workers 2`, taking turns."""
    print("W9: handshakes/s, serve --workers 1 vs --workers 2 (32 clients)", flush=True)
    measured = {n: Measured(f"ours-tls-workers{n}") for n in (1, 2)}
    running = []
    try:
        running = [(n, WorkersServer(n, pki)) for n in (1, 2)]
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
                m = measured[n]
                m.rates.append(s.ops_per_s)
                m.ops += s.ops
                m.errors += s.errors
                m.cpu += cpu
                m.p50.append(s.latency_us["p50"])
                m.p99.append(s.latency_us["p99"])
                print(
                    f"  turn {turn} workers {n}: {s.ops_per_s:>7,.0f}/s"
                    f"  cpu {cpu * 1e6 / max(s.ops, 1):>7,.1f} µs/op  errors {s.errors}",
                    flush=True,
                )
    finally:
        for _, server in running:
            server.stop()
    one = measured[1].row()
    rows = []
    for m in measured.values():
        row = m.row()
        row.update(workload="W9", title="handshakes/s by --workers", mode="handshake", size=0)
        row["rate_vs_one_worker"] = _ratio(row["rate"], one["rate"])
        row["ours"] = True
        rows.append(row)
    return rows


# -- targets, tables, docs --------------------------------------------------------------


def _find(rows: list[dict[str, Any]], workload: str, server: str, size: int | None = None) -> Any:
    for row in rows:
        if (row["workload"], row["server"]) == (workload, server) and (
            size is None or row.get("size") == size
        ):
            return row
    return None


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met?, note) for each target of issue 5 we can evaluate."""
    out: list[tuple[str, str, str, str]] = []

    def absolute(w: str, server: str, limit: float, label: str) -> None:
        row = _find(rows, w, server)
        value = row and row["cpu_us_per_op"]
        if value:
            ok = "met" if value <= limit else "missed"
            out.append((label, f"{value:,.0f} µs", ok, ""))

    def relative(w: str, size: int | None, ref: str, limit: float, label: str) -> None:
        ours = _find(rows, w, "ours-tls" if w in ("W3", "W4") else "ours-dtls", size)
        base = _find(rows, w, ref, size)
        if ours and base and ours["cpu_us_per_op"] and base["cpu_us_per_op"]:
            ratio = ours["cpu_us_per_op"] / base["cpu_us_per_op"]
            ok = "met" if ratio <= limit else "missed"
            note = f"ours {ours['cpu_us_per_op']:,.1f} vs {base['cpu_us_per_op']:,.1f} µs"
            out.append((label, f"{ratio:.2f}x", ok, note))

    absolute("W1", "ours-tls", 470, "W1 handshake server CPU <= 470 µs")
    absolute("W2", "ours-tls", 750, "W2 mTLS handshake server CPU <= 750 µs")
    relative("W3", 64, "trio-tls", 0.6, "W3 64 B round trip CPU <= 0.6x trio SSLStream")
    relative("W3", 64, "tcp", 1.3, "W3 64 B round trip CPU <= 1.3x plain TCP")
    relative("W4", 16384, "trio-tls", 0.5, "W4 16 KiB round trip CPU <= 0.5x trio SSLStream")
    relative("W5", None, "trio-dtls", 0.5, "W5 DTLS handshake CPU <= 0.5x trio DTLSEndpoint")
    for size in (64, 1000):
        relative("W6", size, "trio-dtls", 0.5, f"W6 {size} B CPU <= 0.5x trio DTLSEndpoint")
        relative("W6", size, "udp", 1.5, f"W6 {size} B CPU <= 1.5x plain UDP")
    one, two = _find(rows, "W9", "ours-tls-workers1"), _find(rows, "W9", "ours-tls-workers2")
    if one and two and one["rate"]:
        ratio = two["rate"] / one["rate"]
        note = (
            f"{one['rate']:,.0f} vs {two['rate']:,.0f}/s; the load client shares the "
            f"{os.cpu_count()} cores"
        )
        out.append(
            ("W9 --workers 2 handshakes/s >= 1.7x one worker", f"{ratio:.2f}x",
             "met" if ratio >= 1.7 else "missed", note)
        )  # fmt: skip
    for kind, limit in (("ours-tls", 38.0), ("ours-dtls", 72.0)):
        row = _find(rows, "W7", kind)
        if row:
            value = row["kib_per_connection"]
            what = "TLS connection" if kind == "ours-tls" else "DTLS peer"
            out.append(
                (
                    f"W7 RSS per idle {what} <= {limit:g} KiB",
                    f"{value:.1f} KiB",
                    "met" if value <= limit else "missed",
                    "",
                )
            )
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = [
        "workload",
        "server",
        "rate (ops/s)",
        "MB/s",
        "server CPU µs/op",
        "CPU vs trio",
        "CPU vs ceiling",
        "rate vs trio (W9: vs 1 worker)",
        "p50 / p99 µs",
        "errors",
    ]
    body = []
    for r in rows:
        if r["workload"] == "W7":
            continue
        size = "" if r["mode"] == "handshake" else f" {r['size']} B"
        extra = f" ({r['resumed']}/{r['ops']} resumed)" if r["workload"] == "W8" else ""
        body.append(
            [
                f"{r['workload']}{size}",
                r["server"] + extra,
                _fmt(r["rate"], 0),
                _fmt(r["mb_per_s"], 2) if r["mode"] != "handshake" else "-",
                _fmt(r["cpu_us_per_op"]),
                _fmt(r.get("cpu_vs_trio"), 2),
                _fmt(r.get("cpu_vs_ceiling"), 2),
                _fmt(r.get("rate_vs_trio", r.get("rate_vs_one_worker")), 2),
                f"{_fmt(r['p50_us'], 0)} / {_fmt(r['p99_us'], 0)}",
                str(r["errors"]),
            ]
        )
    return head, body


def memory_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["server", "idle connections", "RSS before MiB", "RSS after MiB", "KiB per connection"]
    body = [
        [
            r["server"],
            str(r["connections"]),
            _fmt(r["rss_before_mib"]),
            _fmt(r["rss_after_mib"]),
            _fmt(r["kib_per_connection"]),
        ]
        for r in rows
        if r["workload"] == "W7"
    ]
    return head, body


def markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def rst(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    rule = "  ".join("=" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [rule, fmt.format(*head), rule]
    lines += [fmt.format(*row) for row in body]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['os']}; Python "
        f"{machine['python']}, trio {machine['trio']}, pyOpenSSL {machine['pyopenssl']} on "
        f"{machine['openssl']}; stdlib ssl on {machine['stdlib_ssl']}"
    )


def write_outputs(result: dict[str, Any], out: Path, update_docs: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = result["rows"]
    goals = [list(t) for t in result["targets"]]
    goal_head = ["target", "measured", "result", "note"]
    md = "\n\n".join(
        [
            f"Machine: {machine_line(result['machine'])}",
            f"Run: {result['run']}",
            markdown(*table_rows(rows)),
            markdown(*memory_rows(rows)),
            markdown(goal_head, goals),
        ]
    )
    (out / "latest.md").write_text(md + "\n")
    print("\n" + md)
    if not update_docs:
        return
    plotted = plot(rows, DOCS_PLOT)
    section = [
        BEGIN,
        "",
        f"Measured {result['date']} on: {machine_line(result['machine'])}.",
        f"Run: ``{result['run']}``.",
        "",
        rst(*table_rows(rows)),
        "",
        "W7, server RSS per idle connection:",
        "",
        rst(*memory_rows(rows)),
        "",
        "Targets from issue 5 (server CPU per operation unless stated):",
        "",
        rst(goal_head, [[c or "-" for c in g] for g in goals]),
        "",
    ]
    if plotted:
        section += [
            f".. image:: _static/{DOCS_PLOT.name}",
            "   :alt: server CPU per operation, ours beside trio's, per workload",
            "",
        ]
    section.append(END)
    text = DOCS_PAGE.read_text()
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + "\n".join(section) + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    DOCS_PAGE.write_text(text)
    print(f"updated {DOCS_PAGE}" + (f" and {DOCS_PLOT}" if plotted else ""))


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bar chart: server CPU per operation, each workload's servers side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'trio-tls-dtls[plot]')")
        return False
    rows = [r for r in rows if r["workload"] != "W7" and r["cpu_us_per_op"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        size = "" if r["mode"] == "handshake" else f"\n{r['size']} B"
        groups.setdefault(f"{r['workload']}{size}", []).append(r)
    colors = {"ours": "tab:blue", "trio": "tab:orange", "ceiling": "tab:gray"}
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    x = 0.0
    ticks, labels, seen = [], [], set()
    for label, members in groups.items():
        for i, r in enumerate(members):
            family = (
                "ours" if r["ours"] else "trio" if r["server"].startswith("trio") else "ceiling"
            )
            name = {"ours": "trio-tls-dtls", "trio": "trio", "ceiling": "plain TCP/UDP"}[family]
            ax.bar(
                x + i * 0.27,
                r["cpu_us_per_op"],
                width=0.25,
                color=colors[family],
                label=None if family in seen else name,
            )
            seen.add(family)
        ticks.append(x + 0.27 * (len(members) - 1) / 2)
        labels.append(label)
        x += 1.2
    ax.set_yscale("log")
    ax.set_ylabel("server CPU per operation (µs, log)")
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.legend()
    ax.set_title("Server CPU per handshake / round trip (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trio-tls-dtls benchmark suite (W1..W8)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, 200 idle conns")
    parser.add_argument("--rounds", type=int, default=2, help="turns per server (default: 2)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per turn (3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds (0.5)")
    parser.add_argument("--procs", type=int, default=1, help="bench client processes (1)")
    parser.add_argument("--idle", type=int, default=1000, help="W7 idle connections (1000)")
    parser.add_argument("--only", default="", help="comma-separated workloads to run, e.g. W1,W7")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the docs table")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.idle = 1, 1.0, 200
    only = {w.strip().upper() for w in opts.only.split(",") if w.strip()}
    import ssl

    machine = machine_description() | {"stdlib_ssl": ssl.OPENSSL_VERSION}
    run = " ".join(["benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-bench-") as tmp:
        pki = Path(tmp)
        write_dev_pki(pki, make_dev_pki(key_type="ec"))
        for w in WORKLOADS:
            if not only or w.name in only:
                rows += run_workload(w, pki, opts)
        if not only or "W7" in only:
            rows += run_memory(pki, opts)
        if not only or "W9" in only:
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
