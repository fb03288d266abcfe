"""Crypto offload: handshakes run in worker threads and the event loop keeps going."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import trio
import trio.lowlevel

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_tls_server
from trio_tls_dtls import OffloadSettings, open_tls_stream
from trio_tls_dtls.drivers.offload import CryptoOffload

T = TypeVar("T")


class WatchedOffload(CryptoOffload):
    """Records, for each offloaded call, the heartbeat count before and after it."""

    def __init__(self, settings: OffloadSettings, heartbeat: list[int]) -> None:
        super().__init__(settings)
        self.heartbeat = heartbeat
        self.spans: list[tuple[int, int]] = []
        self.threads: set[int] = set()

    async def run(self, fn: Callable[[], T]) -> T:
        def in_thread() -> T:
            self.threads.add(threading.get_ident())
            return fn()

        before = self.heartbeat[0]
        result = await super().run(in_thread)
        self.spans.append((before, self.heartbeat[0]))
        return result


async def test_event_loop_keeps_running_during_handshakes(rsa_pki: PKIFiles) -> None:
    heartbeat = [0]
    offload = WatchedOffload(OffloadSettings(handshakes=True, max_threads=2), heartbeat)
    clients = 24

    async def beat() -> None:
        while True:
            heartbeat[0] += 1
            await trio.lowlevel.checkpoint()

    async def client(port: int) -> None:
        stream = await open_tls_stream("127.0.0.1", port, settings=rsa_pki.client_settings())
        await stream.send_all(b"x")  # the echo proves the server's side finished too
        assert await stream.receive_some() == b"x"
        await stream.aclose()

    async with (
        running_tls_server(rsa_pki.server_settings(), offload=offload) as server,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(beat)
        async with trio.open_nursery() as handshakes:
            for _ in range(clients):
                handshakes.start_soon(client, port_of(server))
        nursery.cancel_scope.cancel()

    assert server.stats.handshakes_ok == clients
    # Every server handshake step ran in a worker thread, never the loop's.
    assert offload.spans and threading.get_ident() not in offload.threads
    # While those threads worked, the heartbeat task kept being scheduled.
    advanced = sum(after > before for before, after in offload.spans)
    assert advanced >= len(offload.spans) // 2, offload.spans


async def test_limiter_bounds_crypto_threads(pki: PKIFiles) -> None:
    offload = CryptoOffload(OffloadSettings(handshakes=True, max_threads=1))
    running = 0
    peak = 0
    lock = threading.Lock()
    original = offload.run

    async def counting_run(fn: Callable[[], T]) -> T:
        def counted() -> T:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                return fn()
            finally:
                with lock:
                    running -= 1

        return await original(counted)

    offload.run = counting_run  # type: ignore[method-assign]

    async def client(port: int) -> None:
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        await stream.aclose()

    async with (
        running_tls_server(pki.server_settings(), offload=offload) as server,
        trio.open_nursery() as nursery,
    ):
        for _ in range(8):
            nursery.start_soon(client, port_of(server))
    assert peak == 1
    assert offload.busy_threads == 0
