"""The server under soak and scale tests: ``python soak_server.py DIR [options]``.

It runs one :class:`~trio_tls_dtls.Service` (TLS and DTLS echo on one port of
127.0.0.1) with the development PKI in DIR and, as ``trio-tlsd serve`` does,
the memory trim after a burst
(:func:`~trio_tls_dtls.service.memory_trim.trim_memory_after_bursts`; off with
``--no-memory-trim``), prints ``READY <port>`` and then answers commands, one
per line on stdin, with one JSON line on stdout:

* ``stats``: what the server holds right now (see :func:`snapshot`);
* ``trim``: the same, after ``gc.collect()`` and glibc's ``malloc_trim(0)``,
  so that the resident size reflects what is still referenced rather than
  what the allocator kept for later (with how long each took);
* ``malloc_trim``: the same, after ``malloc_trim(0)`` alone (no collection);
* ``snapshot``: with ``--tracemalloc``, the Python heap: the first call
  keeps a baseline, later ones list the difference by allocation site;
* ``quit`` (or end of input): stop.

The driver reads the resident size and the open descriptors itself, from
``/proc/PID``; the server reports what only it can see: open connections,
the DTLS peer table, and the number of live Trio tasks.

Client certificates are optional (``verify_client=optional``): a client that
sends one gets mutual TLS, the others do not.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import trio

from trio_tls_dtls import CertificateSettings, ServerSettings, VerifyClient
from trio_tls_dtls.service.memory_trim import trim_memory_after_bursts
from trio_tls_dtls.service.service import Service

HOST = "127.0.0.1"


def malloc_trim() -> bool:
    """Return freed heap pages to the OS (glibc only); False where unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


_snapshots: list[tracemalloc.Snapshot] = []


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def allocator_report() -> dict[str, float]:
    """glibc's view of its heap (``mallinfo2``) and Python's small-object arenas, in MiB.

    ``malloc_in_use``: bytes handed out by malloc and not freed (OpenSSL's
    and CPython's big objects); ``malloc_free``: free bytes glibc holds in
    its heaps; ``mmapped``: large blocks mapped on their own;
    ``pymalloc_arenas``: CPython's small-object arenas still mapped (1 MiB
    each on 64-bit since 3.10), each kept while any object in it lives, with
    the bytes of their objects (``pymalloc_in_use``) and of their free
    blocks (``pymalloc_free``).
    """
    report: dict[str, float] = {}
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        report["malloc_in_use"] = info.uordblks / 2**20
        report["malloc_free"] = info.fordblks / 2**20
        report["mmapped"] = info.hblkhd / 2**20
    report.update(_pymalloc_arenas())
    return report


def _pymalloc_arenas() -> dict[str, float]:
    """CPython's small-object allocator, from ``sys._debugmallocstats`` (it writes to fd 2)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    names = {
        "arenas allocated current": "pymalloc_arenas",
        "bytes in allocated blocks": "pymalloc_in_use",
        "bytes in available blocks": "pymalloc_free",
    }
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        key, value = key.strip(" #"), value.strip().replace(",", "")
        if key in names and names[key] not in found:
            scale = 1 if key.startswith("arenas") else 2**20
            found[names[key]] = float(value) / scale
        elif key == "Total":
            found["pymalloc_mapped"] = float(value) / 2**20
            break  # the first Total is the arenas'; later ones are other tables
    return found


def python_heap_report(top: int = 12) -> dict[str, object]:
    """What tracemalloc sees (with ``--tracemalloc``): the first call is the baseline,
    later ones the difference from it, by allocation site."""
    if not tracemalloc.is_tracing():
        return {"error": "start the server with --tracemalloc"}
    gc.collect()
    current = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if not _snapshots:
        _snapshots.append(current)
        return {"traced_mib": tracemalloc.get_traced_memory()[0] / 2**20}
    diff = current.compare_to(_snapshots[0], "lineno")
    return {
        "traced_mib": tracemalloc.get_traced_memory()[0] / 2**20,
        "diff_mib": sum(d.size_diff for d in diff) / 2**20,
        "top": [
            f"{d.size_diff / 1024:+,.0f} KiB {d.count_diff:+,d}  "
            f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}"
            for d in diff[:top]
        ],
    }


def count_tasks() -> int:
    """Every live Trio task of this run, found by walking down from the root task."""
    pending = [trio.lowlevel.current_root_task()]
    count = 0
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def snapshot(service: Service) -> dict[str, object]:
    assert service.tls is not None
    assert service.dtls is not None
    tls, dtls = service.tls.stats, service.dtls.stats
    return {
        "tls_open": tls.active,
        "tls_accepted": tls.accepted,
        "tls_handshakes_ok": tls.handshakes_ok,
        "tls_handshakes_failed": sum(tls.handshakes_failed.values()),
        "tls_closed_by_reason": dict(tls.closed_by_reason),
        "dtls_peers": dtls.peers_active,
        "dtls_peer_table": len(service.dtls.peers),
        "dtls_peers_total": dtls.peers_total,
        "dtls_handshakes_ok": dtls.handshakes_ok,
        "dtls_handshakes_failed": sum(dtls.handshakes_failed.values()),
        "dtls_idle_timeouts": dtls.idle_timeouts,
        "dtls_closed_by_reason": dict(dtls.closed_by_reason),
        "tasks": count_tasks(),
    }


async def answer_commands(service: Service, cancel: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stdin:
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = line.decode().strip()
                if command == "quit":
                    cancel.cancel()
                    return
                extra: dict[str, object] = {}
                if command == "trim":
                    started = time.perf_counter()
                    gc.collect()
                    collected = time.perf_counter()
                    malloc_trim()
                    extra = {
                        "gc_ms": (collected - started) * 1000,
                        "trim_ms": (time.perf_counter() - collected) * 1000,
                        "allocator": allocator_report(),
                    }
                elif command == "malloc_trim":
                    started = time.perf_counter()
                    malloc_trim()
                    extra = {"trim_ms": (time.perf_counter() - started) * 1000}
                elif command == "snapshot":
                    extra = {"python_heap": python_heap_report(), "allocator": allocator_report()}
                elif command != "stats":
                    print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
                    continue
                print(json.dumps({**snapshot(service), **extra}), flush=True)
    cancel.cancel()


async def main(args: argparse.Namespace) -> None:
    folder: Path = args.dir
    settings = ServerSettings(
        certificate=CertificateSettings(folder / "server.pem", folder / "server.key"),
        ca_file=folder / "ca.pem",
        verify_client=VerifyClient.OPTIONAL,
        idle_timeout=args.idle_timeout or None,
        handshake_timeout=args.handshake_timeout,
        max_connections=args.max_connections,
        max_peers=args.max_peers,
    )
    service = Service(settings)
    await service.bind(0, HOST)
    with trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            if not args.no_memory_trim:  # as trio-tlsd serve does (serve_process)
                nursery.start_soon(trim_memory_after_bursts, service)
            print(f"READY {service.port}", flush=True)
            nursery.start_soon(answer_commands, service, cancel)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path, help="folder with server.pem, server.key, ca.pem")
    p.add_argument("--idle-timeout", type=float, default=3.0, help="seconds; 0 for none")
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    p.add_argument("--max-connections", type=int, default=1024)
    p.add_argument("--max-peers", type=int, default=1024)
    p.add_argument("--tracemalloc", action="store_true", help="trace Python allocations")
    p.add_argument(
        "--no-memory-trim",
        action="store_true",
        help="no malloc_trim after a burst (what main did before issue 14)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    raise_fd_limit()
    options = parse()
    if options.tracemalloc:
        tracemalloc.start(1)
    trio.run(main, options)
