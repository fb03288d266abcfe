"""Measure what the offload defaults rest on: thread hop, handshake CPU, record cost.

    python benchmarks/offload_threshold.py

Prints (1) the wall time of a trio.to_thread round trip, (2) the CPU time of
a full server handshake with ECDSA P-256 and RSA-2048 keys, and (3) the time
to encrypt and decrypt one send of N bytes through the engine. A call is
worth a thread hop when its own cost is several hops.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.settings import CertificateSettings, ClientSettings, ServerSettings


def thread_hop_us(rounds: int = 2000) -> float:
    async def main() -> float:
        limiter = trio.CapacityLimiter(2)
        for _ in range(100):
            await trio.to_thread.run_sync(int, limiter=limiter)
        start = time.perf_counter()
        for _ in range(rounds):
            await trio.to_thread.run_sync(int, limiter=limiter)
        return (time.perf_counter() - start) / rounds * 1e6

    return trio.run(main)


def contexts(key_type: str, folder: Path) -> tuple[object, object]:
    write_dev_pki(folder, make_dev_pki(key_type=key_type))  # type: ignore[arg-type]
    server = build_server_context(
        ServerSettings(
            certificate=CertificateSettings(folder / "server.pem", folder / "server.key")
        )
    )
    client = build_client_context(ClientSettings(ca_file=folder / "ca.pem"))
    return server, client


def handshake_server_cpu_us(server_ctx: object, client_ctx: object, rounds: int = 300) -> float:
    samples = []
    for _ in range(rounds):
        client = TLSEngine.client(client_ctx, "localhost")  # type: ignore[arg-type]
        server = TLSEngine.server(server_ctx)  # type: ignore[arg-type]
        server_cpu = 0.0
        for _step in range(4):
            client.do_handshake()
            server.receive_bytes(client.bytes_to_send())
            t0 = time.thread_time()
            done = server.do_handshake()
            server_cpu += time.thread_time() - t0
            client.receive_bytes(server.bytes_to_send())
            if done and client.do_handshake():
                break
        samples.append(server_cpu)
    return statistics.median(samples) * 1e6


def record_cost_us(server_ctx: object, client_ctx: object, size: int, rounds: int = 50) -> float:
    client = TLSEngine.client(client_ctx, "localhost")  # type: ignore[arg-type]
    server = TLSEngine.server(server_ctx)  # type: ignore[arg-type]
    while not (client.do_handshake() and server.do_handshake()):
        server.receive_bytes(client.bytes_to_send())
        server.do_handshake()
        client.receive_bytes(server.bytes_to_send())
    payload = os.urandom(size)
    start = time.perf_counter()
    for _ in range(rounds):
        client.send(payload)
        server.receive_bytes(client.bytes_to_send())
        got = 0
        while got < size:
            chunk = server.receive(size)
            assert chunk
            got += len(chunk)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    hop = thread_hop_us()
    print(f"trio.to_thread round trip: {hop:.0f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        for key_type in ("ec", "rsa"):
            folder = Path(tmp) / key_type
            server_ctx, client_ctx = contexts(key_type, folder)
            cpu = handshake_server_cpu_us(server_ctx, client_ctx)
            print(f"server handshake CPU ({key_type}): {cpu:.0f} µs = {cpu / hop:.1f} hops")
        server_ctx, client_ctx = contexts("ec", Path(tmp) / "rec")
        for size in (1024, 16384, 65536, 262144, 1 << 20):
            cost = record_cost_us(server_ctx, client_ctx, size)
            print(f"encrypt+decrypt {size:>8} B: {cost:8.0f} µs = {cost / hop:5.1f} hops")
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}")


if __name__ == "__main__":
    main()
