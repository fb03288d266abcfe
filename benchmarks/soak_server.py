"""The server under soak and scale tests: ``python soak_server.py DIR [options]``.

It runs one :class:`~trio_tls_dtls.Service` (TLS and DTLS echo on one port of
127.0.0.1) with the development PKI in DIR, prints ``READY <port>`` and then
answers commands, one per line on stdin, with one JSON line on stdout:

* ``stats``: what the server holds right now (see :func:`snapshot`);
* ``trim``: the same, after ``gc.collect()`` and glibc's ``malloc_trim(0)``,
  so that the resident size reflects what is still referenced rather than
  what the allocator kept for later;
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
from pathlib import Path

import trio

from trio_tls_dtls import CertificateSettings, ServerSettings, VerifyClient
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
                if command == "trim":
                    gc.collect()
                    malloc_trim()
                elif command != "stats":
                    print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
                    continue
                print(json.dumps(snapshot(service)), flush=True)
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
    return p.parse_args(argv)


if __name__ == "__main__":
    raise_fd_limit()
    trio.run(main, parse())
