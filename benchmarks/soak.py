"""Soak test: churn TLS connections and DTLS peers at a steady rate, watch for leaks.

    python benchmarks/soak.py [--minutes 5] [--update-docs]
    nox -s soak [-- --minutes 1]

The server (``benchmarks/soak_server.py``: a :class:`~trio_tls_dtls.Service`
with a 3 s idle timeout and optional client certificates) runs in its own
process with a development PKI made by ``trio-tlsd certs`` in a temporary
folder. This process is the load: every 1/rate seconds it starts one TLS
client and one DTLS client (up to a cap in flight). Each client

* handshakes: TLS half resumed (a ticket from an earlier connection), a
  fifth with a client certificate (mutual TLS), the rest full; DTLS resumes
  a third of the time;
* echoes a few messages;
* leaves: TLS politely (close_notify) or, one time in five, abruptly (a TCP
  reset: SO_LINGER 0, no close_notify); DTLS politely or, one time in three,
  by vanishing (its socket closed without a word), so the server must time
  the peer out.

Every few seconds the server's resident size (VmRSS) and open descriptors are
read from ``/proc/PID``, and the server reports its open TLS connections,
DTLS peer-table size and live Trio tasks.

**Leak criterion.** The first 20 % of the run is warm-up (caches, arenas and
session caches fill). Over the samples after it, a metric *grows* when both

1. the median of the last third exceeds the median of the first third by
   more than its tolerance, and
2. the least-squares slope, projected over the post-warm-up window, also
   exceeds that tolerance.

The first ignores single spikes; the second ignores a level that wobbles
without a trend. Tolerances: RSS max(4 MiB, 5 %); counts (descriptors,
tasks, connections, peers) max(8, 25 %) of the first-third median, since
they follow the number of clients in flight. After the run the load stops,
the server gets its idle timeout plus a margin; then comes a burst
(``benchmarks/soak_burst.py``: 2,000 TLS connections and then 500 DTLS
peers held at once and closed), after which the resident size must be back
within 25 MiB of where it was before it, with no ``malloc_trim`` asked for
(the server's own trim after a burst must have done it). Then it must be
back to zero connections, an empty peer table, and the task and descriptor
counts it had before the first client. Any growth, any such leftover, a
failed burst check, or more than 1 % failed clients fails the run (exit
status 1).

Writes ``benchmarks/results/soak-latest.json``; with ``--update-docs`` also
``docs/soak_results.inc`` (a table, included by docs/soak.rst) and
``docs/_static/soak-latest.png``.

``python benchmarks/soak.py hold ...`` is a helper for tests/service/test_scale.py:
it opens N idle TLS connections or DTLS peers, prints ``OPEN n``, and closes
them all when told ``close`` on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    DTLSChannel,
    TLSStream,
    open_dtls_channel,
    open_tls_stream,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "soak_server.py"
HOST = "127.0.0.1"
RESULTS = HERE / "results" / "soak-latest.json"
DOCS_TABLE = ROOT / "docs" / "soak_results.inc"
DOCS_PLOT = ROOT / "docs" / "_static" / "soak-latest.png"
WARMUP_FRACTION = 0.2
SERVER_IDLE_TIMEOUT = 3.0
MESSAGES = 3


# -- the server process -------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def make_pki(folder: Path) -> None:
    """The development PKI, made the way a user would: ``trio-tlsd certs``."""
    subprocess.run(
        [sys.executable, "-m", "trio_tls_dtls", "certs", "--dir", str(folder)],
        check=True,
        capture_output=True,
        env=child_env(),
    )


class ServerProcess:
    """``soak_server.py`` in a child process: start, query, read /proc, stop."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(folder), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"soak server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def query(self, command: str = "stats") -> dict[str, Any]:
        """Ask the server (``stats`` or ``trim``) for one JSON line."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"soak server exited (status {self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sample(self, command: str = "stats") -> dict[str, Any]:
        """Server stats plus RSS (MiB) and descriptors read from /proc."""
        stats = self.query(command)
        stats["rss_mib"] = self.rss_bytes() / 2**20
        stats["fds"] = self.open_fds()
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# -- clients ------------------------------------------------------------------------


@dataclass
class Settings:
    plain: ClientSettings
    mtls: ClientSettings
    # Tickets to resume with, refreshed by every full handshake.
    tls_session: Any = None
    dtls_session: Any = None


def client_settings(folder: Path) -> Settings:
    plain = ClientSettings(ca_file=folder / "ca.pem", handshake_timeout=15.0)
    mtls = ClientSettings(
        ca_file=folder / "ca.pem",
        certificate=CertificateSettings(folder / "client.pem", folder / "client.key"),
        handshake_timeout=15.0,
    )
    return Settings(plain, mtls)


def reset_on_close(stream: TLSStream) -> None:
    """Make the next close send a TCP RST instead of a FIN (SO_LINGER 0)."""
    sock = stream.transport_stream.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def vanish(channel: DTLSChannel) -> None:
    """Drop a DTLS client without close_notify: its socket just closes."""
    channel._link.close()


@dataclass
class Tally:
    started: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    in_flight: int = 0


async def tls_client(port: int, s: Settings, rng: random.Random, tally: Tally) -> None:
    roll = rng.random()
    if roll < 0.5 and s.tls_session is not None:
        kind, settings, session = "tls-resumed", s.plain, s.tls_session
    elif roll < 0.7:
        kind, settings, session = "tls-mtls", s.mtls, None
    else:
        kind, settings, session = "tls-full", s.plain, None
    full_plain = kind == "tls-full"
    abrupt = rng.random() < 0.2
    kind += "-reset" if abrupt else ""
    tally.started[kind] += 1
    try:
        with trio.fail_after(30):
            # The mix chooses full or resumed handshakes itself: no session cache.
            stream = await open_tls_stream(
                HOST, port, settings=settings, session=session, resume=False
            )
            try:
                for n in range(MESSAGES):
                    message = b"soak %d " % n * 8
                    await stream.send_all(message)
                    got = b""
                    while len(got) < len(message):
                        got += await stream.receive_some(65536)
                    if got != message:
                        raise RuntimeError("echo mismatch")
                if full_plain and stream.session is not None:
                    s.tls_session = stream.session
            finally:
                if abrupt:
                    reset_on_close(stream)
                    await trio.aclose_forcefully(stream.transport_stream)
                else:
                    await stream.aclose()
    except Exception as exc:
        tally.failed[f"{kind}: {type(exc).__name__}"] += 1


async def dtls_client(port: int, s: Settings, rng: random.Random, tally: Tally) -> None:
    resumed = rng.random() < 1 / 3 and s.dtls_session is not None
    leave = "vanish" if rng.random() < 1 / 3 else "close"
    kind = f"dtls-{'resumed' if resumed else 'full'}-{leave}"
    tally.started[kind] += 1
    try:
        with trio.fail_after(30):
            channel = await open_dtls_channel(
                HOST,
                port,
                settings=s.plain,
                session=s.dtls_session if resumed else None,
                resume=False,
            )
            try:
                for n in range(MESSAGES):
                    message = b"soak %d" % n
                    await channel.send(message)
                    # Loopback rarely drops, but UDP may: one resend after 1 s.
                    with trio.move_on_after(1):
                        if await channel.receive() == message:
                            continue
                    await channel.send(message)
                    if await channel.receive() != message:
                        raise RuntimeError("echo mismatch")
                if not resumed and channel.session is not None:
                    s.dtls_session = channel.session
            finally:
                if leave == "vanish":
                    vanish(channel)
                else:
                    await channel.aclose()
    except Exception as exc:
        tally.failed[f"{kind}: {type(exc).__name__}"] += 1


async def churn(
    port: int, s: Settings, rate: float, max_in_flight: int, seconds: float, tally: Tally
) -> None:
    """Start one TLS and one DTLS client every 1/rate s for *seconds*; wait for them."""
    rng = random.Random(6)

    async def run(client: Any) -> None:
        tally.in_flight += 1
        try:
            await client(port, s, rng, tally)
        finally:
            tally.in_flight -= 1

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        tick = 0
        while (now := trio.current_time()) - start < seconds:
            for client in (tls_client, dtls_client):
                if tally.in_flight >= max_in_flight:
                    tally.skipped += 1
                else:
                    nursery.start_soon(run, client)
            tick += 1
            await trio.sleep(max(0.0, start + tick / rate - now))


# -- the run ------------------------------------------------------------------------


METRICS = {
    # name: (label, absolute tolerance, relative tolerance)
    "rss_mib": ("RSS (MiB)", 4.0, 0.05),
    "fds": ("open descriptors", 8.0, 0.25),
    "tasks": ("Trio tasks", 8.0, 0.25),
    "tls_open": ("open TLS connections", 8.0, 0.25),
    "dtls_peer_table": ("DTLS peer table", 8.0, 0.25),
}


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def judge(samples: list[dict[str, Any]], warmup: float) -> list[dict[str, Any]]:
    """Apply the leak criterion of the module docstring to each metric."""
    after = [x for x in samples if x["phase"] == "churn" and x["t"] >= warmup]
    third = max(1, len(after) // 3)
    verdicts = []
    for name, (label, absolute, relative) in METRICS.items():
        ts = [x["t"] for x in after]
        ys = [float(x[name]) for x in after]
        first = statistics.median(ys[:third])
        last = statistics.median(ys[-third:])
        tolerance = max(absolute, relative * first)
        projected = slope(ts, ys) * (ts[-1] - ts[0]) if len(ts) > 1 else 0.0
        grows = last - first > tolerance and projected > tolerance
        verdicts.append(
            {
                "metric": name,
                "label": label,
                "first_third": first,
                "last_third": last,
                "projected": projected,
                "tolerance": tolerance,
                "ok": not grows,
            }
        )
    return verdicts


async def soak(args: argparse.Namespace, server: ServerProcess, s: Settings) -> dict[str, Any]:
    seconds = args.minutes * 60
    warmup = WARMUP_FRACTION * seconds
    samples: list[dict[str, Any]] = []
    tally = Tally()
    start = trio.current_time()

    async def take(phase: str, command: str = "stats") -> dict[str, Any]:
        x = await trio.to_thread.run_sync(server.sample, command)
        x["t"] = trio.current_time() - start
        x["phase"] = phase
        x["clients_in_flight"] = tally.in_flight
        samples.append(x)
        return x

    baseline = await take("start", "trim")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn, server.port, s, args.rate, args.max_in_flight, seconds, tally)
        while trio.current_time() - start < seconds:
            await trio.sleep(args.interval)
            x = await take("churn")
            print(
                f"{x['t']:6.0f}s  rss {x['rss_mib']:6.1f} MiB  fds {x['fds']:4d}  "
                f"tasks {x['tasks']:4d}  tls {x['tls_open']:3d}  peers {x['dtls_peer_table']:3d}  "
                f"failed {sum(tally.failed.values())}",
                flush=True,
            )
    # Load stopped: vanished peers need the idle timeout, then a margin.
    settle_until = trio.current_time() + SERVER_IDLE_TIMEOUT + 3
    while trio.current_time() < settle_until:
        await trio.sleep(1)
        await take("settle")
    # A burst, and whether its memory is given back (benchmarks/soak_burst.py).
    from soak_burst import burst_check

    burst = await burst_check(server, s)
    await take("burst")
    end = await take("end", "trim")

    verdicts = judge(samples, warmup)
    leftovers = {
        "tls_open": end["tls_open"],
        "dtls_peer_table": end["dtls_peer_table"],
        "extra_tasks": end["tasks"] - baseline["tasks"],
        "extra_fds": end["fds"] - baseline["fds"],
    }
    clients = sum(tally.started.values())
    failed = sum(tally.failed.values())
    ok = (
        all(v["ok"] for v in verdicts)
        and not any(leftovers.values())
        and failed <= 0.01 * max(1, clients)
        and burst["ok"]
    )
    return {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "minutes": args.minutes,
        "rate": args.rate,
        "warmup_seconds": warmup,
        "clients": clients,
        "clients_by_kind": dict(sorted(tally.started.items())),
        "failed": dict(tally.failed),
        "skipped": tally.skipped,
        "baseline": baseline,
        "end": end,
        "leftovers": leftovers,
        "burst": burst,
        "verdicts": verdicts,
        "ok": ok,
        "samples": samples,
    }


# -- report -------------------------------------------------------------------------


def rst_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([rule, line(rows[0]), rule, *map(line, rows[1:]), rule])


def report(result: dict[str, Any], machine: str) -> str:
    rows = [["metric", "first third", "last third", "trend over window", "tolerance", "verdict"]]
    for v in result["verdicts"]:
        fmt = "{:,.1f}" if v["metric"] == "rss_mib" else "{:,.0f}"
        rows.append(
            [
                v["label"],
                fmt.format(v["first_third"]),
                fmt.format(v["last_third"]),
                ("{:+,.1f}").format(v["projected"]),
                fmt.format(v["tolerance"]),
                "steady" if v["ok"] else "GROWS",
            ]
        )
    b, e, left = result["baseline"], result["end"], result["leftovers"]
    kinds = ", ".join(f"{k} {n:,}" for k, n in result["clients_by_kind"].items())
    failed = sum(result["failed"].values())
    return "\n".join(
        [
            f"Measured {result['when']} on: {machine}.",
            f"Run: ``benchmarks/soak.py --minutes {result['minutes']:g} --update-docs``, "
            f"{result['rate']:g} TLS + {result['rate']:g} DTLS clients/s, "
            f"warm-up {result['warmup_seconds']:.0f} s. "
            f"Verdict: **{'pass' if result['ok'] else 'FAIL'}**.",
            "",
            rst_table(rows),
            "",
            f"Clients: {result['clients']:,} ({kinds}); failed {failed}, "
            f"skipped at the in-flight cap {result['skipped']}.",
            "",
            "Before the first client / at the end (the load stopped, the idle timeout "
            "passed, the burst check done): "
            f"RSS {b['rss_mib']:.1f} / {e['rss_mib']:.1f} MiB, "
            f"descriptors {b['fds']} / {e['fds']}, tasks {b['tasks']} / {e['tasks']}, "
            f"open TLS {b['tls_open']} / {e['tls_open']}, "
            f"DTLS peers {b['dtls_peer_table']} / {e['dtls_peer_table']}; "
            f"DTLS peers timed out idle: {e['dtls_idle_timeouts']:,}. "
            f"Leftovers: {', '.join(f'{k} {v}' for k, v in left.items())}.",
            "",
            describe_burst(result["burst"]),
            "",
        ]
    )


def describe_burst(burst: dict[str, Any]) -> str:
    from soak_burst import describe

    return describe(burst)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'trio-tls-dtls[plot]')")
        return False
    samples = result["samples"]
    ts = [x["t"] for x in samples]
    panels = [
        (["rss_mib"], "RSS (MiB)"),
        (["fds", "tasks"], "descriptors, tasks"),
        (["tls_open", "dtls_peer_table", "clients_in_flight"], "open"),
    ]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 7))
    for ax, (names, ylabel) in zip(axes, panels, strict=True):
        for name in names:
            ax.plot(ts, [x[name] for x in samples], label=name, linewidth=1.2)
        ax.axvspan(0, result["warmup_seconds"], color="0.9", label="warm-up")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize="small")
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("seconds")
    verdict = "pass" if result["ok"] else "FAIL"
    axes[0].set_title(f"trio-tlsd soak, {result['minutes']:g} min: {verdict}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def machine_description() -> str:
    import platform

    import OpenSSL
    from OpenSSL import SSL

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, trio {trio.__version__}, "
        f"pyOpenSSL {OpenSSL.__version__} on "
        f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}"
    )


def run_soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-soak-") as tmp:
        folder = Path(tmp)
        make_pki(folder)
        from soak_burst import SERVER_OPTIONS

        server = ServerProcess(folder, "--idle-timeout", str(SERVER_IDLE_TIMEOUT), *SERVER_OPTIONS)
        try:
            result = trio.run(soak, args, server, client_settings(folder))
        finally:
            server.stop()
    text = report(result, machine_description())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(text)
    print(f"samples: {RESULTS}")
    if args.update_docs:
        DOCS_TABLE.write_text(text)
        print(f"table: {DOCS_TABLE}")
        if plot(result, DOCS_PLOT):
            print(f"plot: {DOCS_PLOT}")
    return 0 if result["ok"] else 1


# -- hold: many idle connections, for tests/service/test_scale.py ----------------------------


async def hold(args: argparse.Namespace) -> None:
    """Open N idle connections (or peers), report, close them all on command."""
    s = client_settings(args.dir)
    opened: list[TLSStream | DTLSChannel] = []
    limit = trio.Semaphore(args.concurrency)
    # One full handshake first; the rest resume its session (cheaper both ways).
    if args.kind == "tls":
        first: TLSStream | DTLSChannel = await open_tls_stream(HOST, args.port, settings=s.plain)
    else:
        first = await open_dtls_channel(HOST, args.port, settings=s.plain)
    opened.append(first)
    # An echo first: TLS 1.3 tickets arrive after the handshake, with data.
    if isinstance(first, TLSStream):
        await first.send_all(b"ticket?")
        await first.receive_some()
    else:
        await first.send(b"ticket?")
        await first.receive()
    session = first.session

    async def open_one() -> None:
        async with limit:
            if args.kind == "tls":
                opened.append(
                    await open_tls_stream(
                        HOST, args.port, settings=s.plain, session=session, resume=False
                    )
                )
            else:
                opened.append(
                    await open_dtls_channel(
                        HOST, args.port, settings=s.plain, session=session, resume=False
                    )
                )

    async with trio.open_nursery() as nursery:
        for _ in range(args.count - 1):
            nursery.start_soon(open_one)
    print(f"OPEN {len(opened)}", flush=True)

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    await stdin.receive_some()  # "close" (or end of input)
    # Close in small batches: the close_notify datagrams of 10,000 DTLS peers
    # sent at once would overflow the server's UDP receive buffer.
    for i in range(0, len(opened), args.concurrency):
        async with trio.open_nursery() as nursery:
            for conn in opened[i : i + args.concurrency]:
                nursery.start_soon(conn.aclose)
        await trio.sleep(0.005)
    print(f"CLOSED {len(opened)}", flush=True)
    await stdin.aclose()


# -- command line -------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="soak test of trio-tlsd (see module docstring)")
    sub = p.add_subparsers(dest="command")
    h = sub.add_parser("hold", help="open N idle connections until told to close them")
    h.add_argument("kind", choices=["tls", "dtls"])
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--dir", type=Path, required=True, help="the development PKI")
    h.add_argument("--count", type=int, default=10_000)
    h.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--minutes", type=float, default=5.0, help="length of the run (default: 5)")
    p.add_argument(
        "--rate", type=float, default=20.0, help="TLS and DTLS clients started per second, each"
    )
    p.add_argument("--max-in-flight", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--update-docs", action="store_true", help="write the table and the plot")
    args = p.parse_args(argv)
    if args.command is None and args.minutes * 60 < 10 * args.interval:
        args.interval = args.minutes * 60 / 10  # at least ten samples
    return args


def main() -> int:
    args = parse()
    if args.command == "hold":
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        trio.run(hold, args)
        return 0
    return run_soak(args)


if __name__ == "__main__":
    sys.exit(main())
