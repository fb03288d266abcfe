"""``trio-tlsd bench``: flags, a pre-flight check, worker processes, the report.

With ``--procs 1`` the load runs in this process. With ``--procs K`` it runs
in K child processes (``spawn``: each child starts clean and runs its own
Trio loop), clients dealt out round-robin. A ``multiprocessing.Barrier``
starts every size in every process together, a shared counter feeds the
progress bar, and each child sends back its raw latencies, merged here.

Before any load, one connection is made in this process. If nothing
listens, or the certificate does not verify, that fails with one line
naming the target, rather than thousands of identical errors.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ...core.errors import ConfigError, TLSDError
from ..flag_values import positive_int
from ..targets import Target, TargetError, connect_failure, parse_target
from .config import MODES, PROTOS, BenchConfig
from .load import PhaseResult, datagram_limit, open_connection, run_worker
from .report import BenchReport, merge, require_matplotlib

__all__ = ["add_parser", "run", "run_bench"]

_BARRIER_TIMEOUT = 120.0

# Exit status of a run in which some operations failed (2 is bad input or a
# target that cannot be reached at all, as everywhere in trio-tlsd).
EXIT_FAILED_OPERATIONS = 1


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes in bytes like 64,1024,16384, not {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive byte counts, not {text!r}")
    return sizes


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text}")
    return value


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "bench",
        help="load generator: handshakes/s, round trips/s, MB/s, latency percentiles",
        description="Run N concurrent clients against HOST:PORT and report, per message size, "
        "operations/s, MB/s and latency percentiles in microseconds.",
    )
    p.add_argument("target", type=parse_target, metavar="HOST:PORT", help="e.g. 127.0.0.1:4433")
    p.add_argument("--proto", choices=PROTOS, default="tls", help="default: tls")
    p.add_argument("--mode", choices=MODES, default="echo", help="default: echo")
    p.add_argument(
        "--clients", type=positive_int, default=64, metavar="N", help="concurrent clients (64)"
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=(),
        metavar="B,B,...",
        help="message sizes in bytes (default: 64,1024,16384; dtls: 64,1024). A DTLS "
        "message is one record in one datagram: at most the MTU (1200) less the 13-byte "
        "record header and the cipher's overhead (1163 bytes with AES-GCM); the first "
        "connection measures the limit and a larger size is refused",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=positive_int,
        default=100,
        metavar="N",
        help="operations per client per size (default: 100)",
    )
    amount.add_argument(
        "--duration", type=_seconds, metavar="S", help="seconds per size instead of --count"
    )
    p.add_argument(
        "--procs", type=positive_int, default=1, metavar="K", help="client processes (default: 1)"
    )
    p.add_argument("--mtls", action="store_true", help="present --cert/--key (mutual TLS)")
    p.add_argument("--cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--key", type=Path, help="client private key (PEM)")
    p.add_argument("--ca", type=Path, help="CA file to verify the server with")
    p.add_argument("--insecure", action="store_true", help="do not verify the server")
    p.add_argument("--servername", metavar="NAME", help="SNI and name to verify (default: HOST)")
    p.add_argument("--resume", action="store_true", help="handshake mode: resume sessions")
    p.add_argument(
        "--window",
        type=positive_int,
        default=4,
        metavar="N",
        help="bulk mode: messages in flight per connection (default: 4)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="one operation's deadline; a lost datagram counts as an error after it (5)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="latency histogram (needs matplotlib)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a tty")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    target: Target = args.target
    if args.mtls and (args.cert is None or args.key is None):
        raise ConfigError("--mtls needs --cert and --key (the client certificate and key)")
    return BenchConfig(
        proto=args.proto,
        mode=args.mode,
        host=target.host,
        port=target.port,
        clients=args.clients,
        sizes=args.sizes,
        count=args.count,
        duration=args.duration,
        procs=args.procs,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        insecure=args.insecure,
        servername=args.servername,
        resume=args.resume,
        window=args.window,
        op_timeout=args.timeout,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.plot is not None:
        require_matplotlib()  # fail before the load, not after it
    if cfg.insecure:
        print("trio-tlsd bench: WARNING: --insecure: server not verified", file=sys.stderr)
    show_progress = sys.stderr.isatty() and not args.no_progress
    report = run_bench(cfg, progress=show_progress)
    print(report.table())
    if args.json is not None:
        report.write_json(args.json)
    if args.plot is not None:
        report.plot(args.plot)
    if report.errors:
        # A benchmark whose operations failed measured something else: say so
        # in the exit status too, so that scripts and CI notice.
        failed = (
            "every operation failed"
            if report.ops == 0
            else f"{report.errors} of {report.ops + report.errors} operations failed"
        )
        print(f"trio-tlsd bench: {failed} (see the errors in the table)", file=sys.stderr)
        return EXIT_FAILED_OPERATIONS
    return 0


def preflight(cfg: BenchConfig) -> None:
    """One connection (and one echo) now, so a bad target is one clear error.

    Over DTLS it also measures the largest message one record carries (the
    MTU less the record header and the negotiated cipher's overhead) and
    refuses a size above it: every operation of that size would fail.
    """
    settings = cfg.client_settings()

    async def check() -> tuple[int, str | None] | None:
        try:
            with trio.fail_after(cfg.handshake_timeout + cfg.op_timeout):
                conn = await open_connection(cfg, settings)
                try:
                    # Even for handshakes: a TLS 1.3 client finishes its side
                    # before the server has judged its certificate, so only
                    # a round trip shows that the server accepted us.
                    await conn.round_trip(b"preflight")
                    return datagram_limit(conn)
                finally:
                    await conn.aclose()
        except trio.TooSlowError:
            raise TargetError(
                f"no answer from {cfg.proto} {Target(cfg.host, cfg.port)} within "
                f"{cfg.handshake_timeout + cfg.op_timeout:g}s (is it an echo server?)"
            ) from None
        except (OSError, TLSDError, trio.BrokenResourceError, ValueError) as exc:
            raise connect_failure(exc, cfg.proto, Target(cfg.host, cfg.port)) from None

    limit = trio.run(check)
    if limit is not None and cfg.mode != "handshake":
        _check_sizes_fit(cfg, settings.mtu, *limit)


def _check_sizes_fit(cfg: BenchConfig, mtu: int, limit: int, cipher: str | None) -> None:
    too_big = [size for size in cfg.sizes if size > limit]
    if not too_big:
        return
    if cfg.proto == "dtls":
        where = f"a DTLS record at MTU {mtu} with {cipher} holds at most {limit} bytes"
    else:
        where = f"a UDP datagram holds at most {limit} bytes"
    raise ConfigError(f"--sizes {too_big[0]}: {where}; give sizes up to {limit}")


def run_bench(cfg: BenchConfig, *, progress: bool = False, check: bool = True) -> BenchReport:
    """Run the load described by *cfg* and return the merged report."""
    if check:
        preflight(cfg)
    expected = None if cfg.duration is not None else cfg.clients * cfg.count
    bar = _ProgressBar(len(cfg.phase_sizes), expected, cfg.duration) if progress else None
    per_worker = [_run_in_process(cfg, bar)] if cfg.procs == 1 else _run_in_children(cfg, bar)
    if bar is not None:
        bar.finish()
    sizes = [
        merge(size, [phases[i] for phases in per_worker]) for i, size in enumerate(cfg.phase_sizes)
    ]
    return BenchReport(cfg, sizes)


# -- one process -------------------------------------------------------------


def _run_in_process(cfg: BenchConfig, bar: _ProgressBar | None) -> list[PhaseResult]:
    done = [0]

    def tick(n: int) -> None:
        done[0] += n

    async def main() -> list[PhaseResult]:
        phase = [0]

        async def next_phase() -> None:
            phase[0] += 1
            if bar is not None:
                bar.start_phase(phase[0])
            await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            if bar is not None:
                nursery.start_soon(_draw_forever, bar, lambda: done[0])
            results = await run_worker(cfg, cfg.clients, tick, next_phase)
            nursery.cancel_scope.cancel()
        return results

    return trio.run(main)


async def _draw_forever(bar: _ProgressBar, done: Callable[[], int]) -> None:
    while True:
        bar.draw(done())
        await trio.sleep(0.1)


# -- several processes ---------------------------------------------------------


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _child_main(
    cfg: BenchConfig,
    clients: int,
    barrier: Any,
    counter: Any,
    results: Any,
    index: int,
) -> None:
    """A worker process: its share of clients in its own Trio run."""
    pending = [0]

    def tick(n: int) -> None:
        pending[0] += n

    def flush() -> None:
        if pending[0]:
            with counter.get_lock():
                counter.value += pending[0]
            pending[0] = 0

    async def next_phase() -> None:
        flush()
        await trio.to_thread.run_sync(barrier.wait, _BARRIER_TIMEOUT)

    async def report_progress() -> None:
        while True:
            await trio.sleep(0.1)
            flush()

    async def main() -> list[PhaseResult]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_progress)
            out = await run_worker(cfg, clients, tick, next_phase)
            nursery.cancel_scope.cancel()
        flush()
        return out

    try:
        results.put((index, trio.run(main), None))
    except BaseException as exc:
        barrier.abort()  # the others must not wait for us at the next phase
        results.put((index, None, f"{type(exc).__name__}: {exc}"))


def _run_in_children(cfg: BenchConfig, bar: _ProgressBar | None) -> list[list[PhaseResult]]:
    ctx = multiprocessing.get_context("spawn")
    # The parent joins the barrier too, so it knows when each phase starts.
    barrier = ctx.Barrier(cfg.procs + 1)
    counter = ctx.Value("q", 0)
    results = ctx.Queue()
    children = [
        ctx.Process(
            target=_child_main,
            args=(cfg, _share(cfg.clients, cfg.procs, i), barrier, counter, results, i),
            daemon=True,
        )
        for i in range(cfg.procs)
    ]
    for child in children:
        child.start()
    stop = threading.Event()
    watcher = threading.Thread(target=_follow_phases, args=(cfg, barrier, bar, stop), daemon=True)
    watcher.start()
    collected: dict[int, list[PhaseResult]] = {}
    failures: list[str] = []
    try:
        while len(collected) + len(failures) < cfg.procs:
            try:
                index, phases, error = results.get(timeout=0.1)
            except queue.Empty:
                if bar is not None:
                    bar.draw(counter.value)
                if not any(c.is_alive() for c in children) and results.empty():
                    failures.append("a worker process died without a result")
                    barrier.abort()
                continue
            if error is not None:
                failures.append(error)
                barrier.abort()
            else:
                collected[index] = phases
    finally:
        stop.set()
        barrier.abort()
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()  # our own child, by handle
                child.join()
    if failures:
        raise TLSDError(f"bench worker failed: {failures[0]}")
    return [collected[i] for i in range(cfg.procs)]


def _follow_phases(cfg: BenchConfig, barrier: Any, bar: _ProgressBar | None, stop: Any) -> None:
    for phase in range(1, len(cfg.phase_sizes) + 1):
        if stop.is_set():
            return
        try:
            barrier.wait(_BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            return
        if bar is not None:
            bar.start_phase(phase)


# -- progress ----------------------------------------------------------------------


class _ProgressBar:
    """One redrawn line on stderr: phase, operations, elapsed time."""

    WIDTH = 30

    def __init__(self, phases: int, per_phase: int | None, duration: float | None) -> None:
        self.phases = phases
        self.per_phase = per_phase
        self.duration = duration
        self.phase = 0
        self.phase_started = time.monotonic()
        self.started = time.monotonic()

    def start_phase(self, phase: int) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()

    def draw(self, done: int) -> None:
        elapsed = time.monotonic() - self.started
        if self.per_phase is not None:
            fraction = done / (self.per_phase * self.phases)
        elif self.duration is not None and self.phase:
            in_phase = min(1.0, (time.monotonic() - self.phase_started) / self.duration)
            fraction = (self.phase - 1 + in_phase) / self.phases
        else:
            fraction = 0.0
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(
            f"\r[{bar}] {fraction:4.0%} size {self.phase}/{self.phases} "
            f"{done:,} ops {elapsed:5.1f}s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\r" + " " * (self.WIDTH + 50) + "\r")
        sys.stderr.flush()
