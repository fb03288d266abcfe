"""Where our server spends its CPU: py-spy flame graphs and sample shares under a workload.

    python benchmarks/flame.py W3 [--kind ours-tls] [--tree PATH] [--duration S] [--out DIR]

Starts ``benchmarks/servers.py KIND`` from *tree* (default: this tree)
pinned to CPU 0, drives it with the bench load (as
``benchmarks/compare_commits.py`` does, pinned to CPU 1) and records it with
``py-spy`` (``pip install py-spy``) meanwhile. Writes, under *out* (default
``benchmarks/results/flame``):

* ``WORKLOAD-LABEL.svg``, the flame graph;
* ``WORKLOAD-LABEL.txt``, the server CPU per operation, the shares of the
  busy samples by layer (OpenSSL and pyOpenSSL, ours, trio, the rest) and
  the functions with the largest shares, inclusive and self;
* ``WORKLOAD-LABEL.collapsed``, the busy stacks (``frame;frame;... count``),
  for any other question.

Shares of samples, not seconds, are the figure to compare: on a machine
shared with other work, wall-clock time moves with the neighbours, but the
share of its own samples a function takes does not. Samples of threads that
wait (the loop in ``epoll_wait``, an idle worker thread) are left out of
the shares (see ``IDLE_LEAVES``), so they are shares of the server's CPU;
the SVG shows everything py-spy saw. The server CPU per operation (from ``/proc``) is
printed too, as the suite measures it.
"""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare_commits import LOAD_CPU, WORKLOADS, TreeServer, Workload  # noqa: E402

from trio_tls_dtls.cli.bench import BenchConfig, run_bench  # noqa: E402
from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki  # noqa: E402

TOP = 30

# py-spy cannot tell idle threads from running ones on this kind of machine
# (a VM whose /proc thread states it does not trust), so samples whose
# innermost frame is a wait are dropped here: the event loop in epoll_wait,
# a worker thread waiting for its next job.
IDLE_LEAVES = ("EpollIOManager.get_events (", "WorkerThread._work (")


def workload(name: str) -> Workload:
    for w in WORKLOADS:
        if w.name.split(" ")[0] == name.split(" ")[0] and (
            " " not in name or name.split(" ", 1)[1] in w.name
        ):
            return w
    raise SystemExit(f"no workload {name!r}; one of: {', '.join(w.name for w in WORKLOADS)}")


def load(w: Workload, port: int, pki: Path, duration: float) -> int:
    cfg = BenchConfig(
        proto=w.proto,  # type: ignore[arg-type]
        mode=w.mode,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        clients=w.clients,
        sizes=(w.size,),
        duration=duration,
        ca_file=pki / "ca.pem",
        cert_file=pki / "client.pem" if w.mtls else None,
        key_file=pki / "client.key" if w.mtls else None,
        servername="localhost",
    )
    return run_bench(replace(cfg), check=False).sizes[0].ops


Stacks = Counter[tuple[str, ...]]


def busy_stacks(collapsed: str) -> Stacks:
    """py-spy's collapsed stacks (``frame;frame;... count``), without the idle ones."""
    stacks: Stacks = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # Python frames only: the process and thread labels have no "(file:line)".
        frames = tuple(f for f in stack.split(";") if f.endswith(")") and "(" in f)
        if frames and not frames[-1].startswith(IDLE_LEAVES):
            stacks[frames] += int(count)
    return stacks


def shares(stacks: Stacks) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, and samples per function: inclusive, and self (the innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks.items():
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    return sum(stacks.values()), inclusive, own


def flame_svg(stacks: Stacks, title: str, width: int = 1200, row: int = 16) -> str:
    """A flame graph of *stacks* (callers below callees), as a standalone SVG."""
    tree: dict[str, Any] = {}
    for frames, n in stacks.items():
        node = tree
        for frame in frames:
            entry = node.setdefault(frame, [0, {}])
            entry[0] += n
            node = entry[1]
    total = max(sum(stacks.values()), 1)
    depth = max((len(f) for f in stacks), default=1)
    height = (depth + 2) * row
    rects: list[str] = []

    def place(node: dict[str, Any], x: float, level: int) -> None:
        for frame, (n, children) in sorted(node.items()):
            w = n / total * width
            if w >= 0.3:
                y = height - (level + 1) * row
                hue = 10 + zlib.crc32(frame.encode()) % 45
                name = frame.split(" (")[0]
                label = html.escape(name[: int(w / 7)]) if w > 21 else ""
                tip = html.escape(f"{frame}: {n} samples, {n / total:.1%}")
                rects.append(
                    f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="hsl({hue},85%,60%)"/>'
                    f'<text x="{x + 2:.1f}" y="{y + row - 4}">{label}</text></g>'
                )
                place(children, x, level + 1)
            x += w

    place(tree, 0.0, 0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<text x="4" y="12">{html.escape(title)} (busy samples only; hover for shares)</text>'
        + "".join(rects)
        + "</svg>\n"
    )


OPENSSL = "OpenSSL (C) + the calls into it (pyOpenSSL, core/ssl_calls.py)"


# Innermost frames whose own samples are nearly all a socket system call
# (the kernel's time: loopback TCP and UDP deliver to the peer in the send).
SYSCALL_FRAMES = (
    "TLSStream._transport_send (",  # os.write
    "TLSStream._receive_into_engine (",  # os.read
    "SocketSender.sendto_nowait (",  # sendto
    "DTLSServer._receive_loop (",  # recvfrom
    "_SocketType._nonblocking_helper (",  # trio's wrapper around one
    "socket.accept (",
    "socket._real_close (",
    "EpollIOManager._epoll_wait (",
    "EpollIOManager._update_registrations (",  # epoll_ctl
)
SYSCALLS = "socket and epoll system calls (kernel)"


def area(frame: str) -> str:
    """Which layer a frame's own samples belong to: by its file, or a system call."""
    if frame.startswith(SYSCALL_FRAMES):
        return SYSCALLS
    where = frame.rsplit("(", 1)[-1]
    for prefix, name in (
        # Thin Python around each C call: their own samples are OpenSSL's.
        ("OpenSSL/", OPENSSL),
        ("trio_tls_dtls/core/ssl_calls.py", OPENSSL),
        ("trio_tls_dtls/core/", "ours: core"),
        ("trio_tls_dtls/", "ours: drivers, service"),
        ("trio/", "trio"),
        ("outcome/", "trio"),
        ("cryptography/", "cryptography"),
    ):
        if where.startswith(prefix):
            return name
    return "stdlib and the rest"


def report(total: int, inclusive: Counter[str], own: Counter[str]) -> str:
    areas: Counter[str] = Counter()
    for frame, n in own.items():
        areas[area(frame)] += n
    lines = [f"{total} busy samples", "", "self share by layer:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in areas.most_common()]
    lines += ["", "inclusive share (a function and everything it calls):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(TOP)]
    lines += ["", "self share (the innermost Python frame; OpenSSL's C time counts here):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(TOP)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="W1, W3, 'W6 64', ...")
    parser.add_argument("--kind", help="servers.py kind (default: ours-tls or ours-dtls)")
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="servers.py and package")
    parser.add_argument("--label", default="now", help="file name suffix (before, after, ...)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flame")
    opts = parser.parse_args(argv)
    w = workload(opts.workload)
    kind = opts.kind or w.kind
    os.sched_setaffinity(0, {LOAD_CPU})
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"{w.name.split(' ')[0]}-{opts.label}"
    with tempfile.TemporaryDirectory() as scratch:
        pki = Path(scratch) / "pki"
        write_dev_pki(pki, make_dev_pki())
        server = TreeServer(opts.tree.resolve(), kind, pki, w.mtls)
        try:
            load(w, server.port, pki, 1.0)  # warm up, not recorded
            raw = Path(scratch) / "raw.txt"
            spy = subprocess.Popen(
                [
                    *("py-spy", "record", "--pid", str(server.proc.pid), "--rate", str(opts.rate)),
                    *("--function", "--duration", str(int(opts.duration))),
                    *("--format", "raw", "-o", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = server.cpu_seconds()
            ops = load(w, server.port, pki, opts.duration)
            spent = server.cpu_seconds() - before
            spy.wait()
        finally:
            server.stop()
        text = raw.read_text()
    stacks = busy_stacks(text)
    summary = report(*shares(stacks))
    head = f"{w.name}, {kind}, {opts.label}: {spent / max(ops, 1) * 1e6:.1f} µs server CPU/op"
    stem.with_suffix(".svg").write_text(flame_svg(stacks, head))
    stem.with_suffix(".collapsed").write_text(
        "".join(f"{';'.join(frames)} {n}\n" for frames, n in stacks.most_common())
    )
    stem.with_suffix(".txt").write_text(f"{head}\n{summary}\n")
    print(head)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
