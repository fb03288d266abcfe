"""Python heap per idle connection, by tracemalloc, with where it is held.

    python benchmarks/conn_memory.py ours-tls [--idle 500] [--top 15]
    python benchmarks/conn_memory.py ours-dtls

Starts the suite's echo server (benchmarks/servers.py) in a child process
under tracemalloc, opens *idle* connections (each echoes once, then waits),
and diffs two heap snapshots the child takes on SIGUSR1: before and while
they are open. Prints the Python heap per connection and the allocation
sites that hold most of it. (tracemalloc inflates RSS; the RSS figure is
W7 of the suite, this is the breakdown behind it.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def serve(kind: str, pki: Path, report: Path, top: int) -> None:
    """The child: the echo server, snapshotting on each SIGUSR1."""
    tracemalloc.start(8)
    snapshots: list[tracemalloc.Snapshot] = []

    def snapshot(*_: object) -> None:
        snapshots.append(tracemalloc.take_snapshot())
        if len(snapshots) == 2:
            diff = snapshots[1].compare_to(snapshots[0], "traceback")
            lines = [f"total {sum(d.size_diff for d in diff)}"]
            for d in diff[:top]:
                frames = [f"{Path(f.filename).name}:{f.lineno}" for f in d.traceback]
                lines.append(f"{d.size_diff:>9} {d.count_diff:>6}  {' <- '.join(reversed(frames))}")
            report.write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, snapshot)
    import servers  # after tracemalloc starts, so its allocations are traced
    import trio

    trio.run(servers.main, kind, pki, False)


def measure(kind: str, idle: int, top: int) -> None:
    import trio
    from suite import _hold_connections, client_proto

    from trio_tls_dtls.cli.bench.config import BenchConfig

    with tempfile.TemporaryDirectory() as folder:
        pki, report = Path(folder) / "pki", Path(folder) / "report.txt"
        subprocess.run(
            [sys.executable, "-m", "trio_tls_dtls", "certs", "--dir", str(pki)],
            check=True,
            capture_output=True,
        )
        argv = [sys.executable, __file__, kind, "--serve", str(pki), "--report", str(report)]
        child = subprocess.Popen([*argv, "--top", str(top)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline().split()[1])
            cfg: Any = BenchConfig(
                proto=client_proto(kind, "dtls" if "dtls" in kind else "tls"),
                mode="echo",
                host="127.0.0.1",
                port=port,
                clients=1,
                ca_file=pki / "ca.pem",
                servername="localhost",
            )
            trio.run(_hold_connections, cfg, 50, lambda: None)  # warm-up: one-off state
            time.sleep(0.5)
            os.kill(child.pid, signal.SIGUSR1)

            def while_open() -> None:
                os.kill(child.pid, signal.SIGUSR1)
                deadline = time.monotonic() + 30
                while not report.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)

            failures = trio.run(_hold_connections, cfg, idle, while_open)
        finally:
            child.terminate()
            child.wait(timeout=30)
        lines = report.read_text().splitlines()
        total = int(lines[0].split()[1])
        held = idle - failures
        print(f"{kind}: {held} idle connections, Python heap {total / held / 1024:.2f} KiB each")
        print("  bytes  blocks  where (innermost last)")
        print("\n".join(lines[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["ours-tls", "ours-dtls", "trio-tls", "trio-dtls"])
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.kind, args.serve, args.report, args.top)
    else:
        measure(args.kind, args.idle, args.top)


if __name__ == "__main__":
    main()
