"""The burst check of the soak run: is the memory of a burst given back afterwards?

    python benchmarks/soak_burst.py [--no-memory-trim]

A burst: 2,000 TLS connections opened (64 handshakes at a time) and held
at once, then all closed; then 500 DTLS peers, the same way. Then the
server gets time to notice the fall (``trio_tls_dtls.service.memory_trim``:
a trim 5 s after the open count fell to half its peak, at most every 10 s)
and its resident size, read from ``/proc`` with no ``gc.collect()`` or
``malloc_trim`` asked for, must be back within :data:`TOLERANCE_MIB` of
where it was before the burst.

Before the trim after a burst existed, the same burst left the server
≈ 80 MiB above its start (2,000 TLS) and ≈ 35 MiB (500 DTLS); see
docs/soak.rst. ``--no-memory-trim`` starts the server without it, to show
the check failing. ``benchmarks/soak.py`` runs this check after its churn.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from soak import HOST, ServerProcess, Settings, client_settings, make_pki

from trio_tls_dtls import DTLSChannel, TLSStream, open_dtls_channel, open_tls_stream

TLS_CONNECTIONS = 2000
DTLS_PEERS = 500
CONCURRENCY = 64
# What a burst may leave behind: CPython's small-object arenas that objects
# outliving the burst keep mapped (1 MiB each), measured at +12-17 MiB for
# this burst; without the trim the check sees +40-80 MiB.
TOLERANCE_MIB = 25.0
# The trigger's quiet time (5 s) and its one-second sampling, with a margin.
TRIM_WAIT = 9.0
# Arguments for soak_server.py: room for the burst.
SERVER_OPTIONS = ("--max-connections", "4096", "--max-peers", "2048")


async def hold_then_close(port: int, s: Settings, kind: str, count: int) -> int:
    """Open *count* connections or peers (each echoes once), hold them all, close them all."""
    opened: list[TLSStream | DTLSChannel] = []
    limit = trio.Semaphore(CONCURRENCY)
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with limit:
            try:
                with trio.fail_after(30):
                    if kind == "tls":
                        stream = await open_tls_stream(HOST, port, settings=s.plain)
                        await stream.send_all(b"burst")
                        await stream.receive_some()
                        opened.append(stream)
                    else:
                        channel = await open_dtls_channel(HOST, port, settings=s.plain)
                        await channel.send(b"burst")
                        await channel.receive()
                        opened.append(channel)
            except Exception:
                failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    # In batches: 500 close_notify datagrams at once could overflow the
    # server's UDP receive buffer.
    for i in range(0, len(opened), CONCURRENCY):
        async with trio.open_nursery() as nursery:
            for conn in opened[i : i + CONCURRENCY]:
                nursery.start_soon(conn.aclose)
        await trio.sleep(0.005)
    return failed


async def wait_until_closed(server: ServerProcess, limit: float = 30.0) -> dict[str, Any]:
    with trio.move_on_after(limit):
        while True:
            stats = await trio.to_thread.run_sync(server.query)
            if stats["tls_open"] == 0 and stats["dtls_peers"] == 0:
                return stats
            await trio.sleep(0.2)
    raise RuntimeError(f"connections still open {limit:g}s after the burst: {stats}")


async def burst_check(server: ServerProcess, s: Settings) -> dict[str, Any]:
    """Run the burst; the resident sizes around it and the verdict."""
    await wait_until_closed(server)
    before = server.rss_bytes() / 2**20
    peaks, failed = {}, 0
    for kind, count in (("tls", TLS_CONNECTIONS), ("dtls", DTLS_PEERS)):
        failed += await hold_then_close(server.port, s, kind, count)
        peaks[kind] = server.rss_bytes() / 2**20
        await wait_until_closed(server)
    await trio.sleep(TRIM_WAIT)
    after = server.rss_bytes() / 2**20
    return {
        "tls_connections": TLS_CONNECTIONS,
        "dtls_peers": DTLS_PEERS,
        "failed": failed,
        "rss_before_mib": before,
        "rss_after_tls_mib": peaks["tls"],
        "rss_after_dtls_mib": peaks["dtls"],
        "rss_after_mib": after,
        "tolerance_mib": TOLERANCE_MIB,
        "ok": after - before <= TOLERANCE_MIB and failed <= 0.01 * (TLS_CONNECTIONS + DTLS_PEERS),
    }


def describe(result: dict[str, Any]) -> str:
    return (
        f"Burst ({result['tls_connections']:,} TLS connections, then {result['dtls_peers']:,} "
        f"DTLS peers, each held at once and closed): RSS {result['rss_before_mib']:.1f} MiB "
        f"before, {result['rss_after_tls_mib']:.1f} / {result['rss_after_dtls_mib']:.1f} MiB "
        f"just after each closed, {result['rss_after_mib']:.1f} MiB {TRIM_WAIT:g} s later "
        f"(tolerance +{result['tolerance_mib']:g} MiB); {result['failed']} failed. "
        f"Verdict: **{'pass' if result['ok'] else 'FAIL'}**."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-memory-trim", action="store_true", help="the server without the trim")
    args = p.parse_args()
    extra = ["--no-memory-trim"] if args.no_memory_trim else []
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-burst-") as tmp:
        folder = Path(tmp)
        make_pki(folder)
        server = ServerProcess(folder, *SERVER_OPTIONS, *extra)
        try:
            result = trio.run(burst_check, server, client_settings(folder))
        finally:
            server.stop()
    print(describe(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(main())
