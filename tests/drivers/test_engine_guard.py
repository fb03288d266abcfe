"""EngineGuard: one thread per SSL object, and the one inline-or-thread decision.

The lock tests hold an offloaded call inside its worker thread (on a
threading.Event) and look at what the loop's tasks can do meanwhile; they
wait on events and on trio.testing.wait_all_tasks_blocked, never on time.
The decision tests run real handshakes between two engines in memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import trio
import trio.testing

from tests.conftest import PKIFiles
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.settings import OffloadSettings
from trio_tls_dtls.drivers.engine_guard import EngineGuard, handshake_step_is_costly
from trio_tls_dtls.drivers.offload import CryptoOffload

T = TypeVar("T")

THREAD_START_LIMIT = 30.0  # a safety net against a hang, not an assertion about time


class CountingOffload(CryptoOffload):
    """Counts the calls that really ran in a worker thread."""

    def __init__(self, settings: OffloadSettings) -> None:
        super().__init__(settings)
        self.threads: list[int] = []

    async def run(self, fn: Callable[[], T]) -> T:
        def in_thread() -> T:
            self.threads.append(threading.get_ident())
            return fn()

        return await super().run(in_thread)


def engines(pki: PKIFiles, *, mutual: bool = False) -> tuple[TLSEngine, TLSEngine]:
    server_settings = pki.mtls_server_settings() if mutual else pki.server_settings()
    client_ctx = build_client_context(pki.client_settings(with_cert=mutual))
    client = TLSEngine.client(client_ctx, "localhost")
    server = TLSEngine.server(build_server_context(server_settings))
    return client, server


def transfer(src: TLSEngine, dst: TLSEngine) -> None:
    dst.receive_bytes(src.bytes_to_send())


def guard_forcing_records_to_threads(pki: PKIFiles) -> EngineGuard:
    _, server = engines(pki)
    return EngineGuard(server, CryptoOffload(OffloadSettings(record_threshold=1)))


class HeldCall:
    """An engine call that, in its worker thread, waits until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.order: list[str] = []

    def __call__(self) -> str:
        self.started.set()
        self.release.wait()
        self.order.append("thread")
        return "thread"

    @contextlib.contextmanager
    def released_on_exit(self) -> Iterator[None]:
        """Let the thread finish however the block ends (a failed assertion too)."""
        try:
            yield
        finally:
            self.release.set()

    async def wait_started(self) -> None:
        started = await trio.to_thread.run_sync(self.started.wait, THREAD_START_LIMIT)
        assert started, "the offloaded call never started"


# -- the lock -------------------------------------------------------------------


async def test_inline_call_runs_at_once_when_nothing_is_offloaded(pki: PKIFiles) -> None:
    guard = guard_forcing_records_to_threads(pki)
    with trio.CancelScope() as scope:
        scope.cancel()
        # No schedule point on the cheap path: a cancelled scope does not
        # interrupt it, and no lock is made for it.
        assert await guard.inline(lambda: "inline") == "inline"
        assert await guard.record(lambda: "small", 0) == "small"
    assert not guard.busy
    assert guard._lock is None


async def test_inline_call_waits_while_an_offloaded_call_runs(pki: PKIFiles) -> None:
    guard = guard_forcing_records_to_threads(pki)
    held = HeldCall()

    async def inline() -> None:
        held.order.append(await guard.inline(lambda: "inline"))

    async with trio.open_nursery() as nursery:
        with held.released_on_exit():
            nursery.start_soon(guard.record, held, 1)
            await held.wait_started()
            assert guard.busy
            nursery.start_soon(inline)
            await trio.testing.wait_all_tasks_blocked()
            assert held.order == []  # the inline call is parked on the lock
    assert held.order == ["thread", "inline"]
    assert not guard.busy
    assert guard._lock is None  # released uncontended: no lock kept


async def test_two_offloaded_calls_take_turns(pki: PKIFiles) -> None:
    guard = guard_forcing_records_to_threads(pki)
    first, second = HeldCall(), HeldCall()
    second.release.set()

    async with trio.open_nursery() as nursery:
        with first.released_on_exit():
            nursery.start_soon(guard.record, first, 1)
            await first.wait_started()
            nursery.start_soon(guard.record, second, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert not second.started.is_set()  # waits for the lock, not in a thread
    assert first.order == second.order == ["thread"]
    assert guard._lock is None


async def test_cancelled_offloaded_call_keeps_the_lock_until_its_thread_ends(
    pki: PKIFiles,
) -> None:
    guard = guard_forcing_records_to_threads(pki)
    held = HeldCall()
    scope = trio.CancelScope()
    results: list[str] = []

    async def offloaded() -> None:
        with scope:
            results.append(await guard.record(held, 1))
            await trio.lowlevel.checkpoint()
            results.append("not reached")

    async def inline() -> None:
        held.order.append(await guard.inline(lambda: "inline"))

    async with trio.open_nursery() as nursery:
        with held.released_on_exit():
            nursery.start_soon(offloaded)
            await held.wait_started()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # The thread still uses the SSL object: the call is not abandoned
            # and the lock is still held.
            assert guard.busy
            nursery.start_soon(inline)
            await trio.testing.wait_all_tasks_blocked()
            assert held.order == []
    assert held.order == ["thread", "inline"]
    # The call's result was delivered (nothing the engine did is lost), and
    # the cancellation took effect at the next checkpoint.
    assert results == ["thread"]
    assert scope.cancelled_caught
    assert not guard.busy


async def test_failing_offloaded_call_releases_the_lock(pki: PKIFiles) -> None:
    guard = guard_forcing_records_to_threads(pki)

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await guard.record(fail, 1)
    assert not guard.busy
    assert await guard.inline(lambda: 1) == 1


# -- the decision: handshake steps -----------------------------------------------


@pytest.mark.parametrize("mutual", [False, True])
def test_which_handshake_steps_are_costly(pki: PKIFiles, mutual: bool) -> None:
    # The offload puts a step in a thread only when it does public-key work.
    client, server = engines(pki, mutual=mutual)
    assert handshake_step_is_costly(client)
    assert not client.do_handshake()
    assert handshake_step_is_costly(server)  # nothing received yet
    assert not server.do_handshake()
    assert handshake_step_is_costly(server)  # still no ClientHello: no flight made
    transfer(client, server)
    assert not server.do_handshake()  # answers the ClientHello: the costly step
    transfer(server, client)
    # Reading the client's Finished costs little, unless it carries a
    # certificate to verify.
    assert handshake_step_is_costly(server) is mutual
    assert handshake_step_is_costly(client)  # verifies the server's chain


async def run_handshake(client: EngineGuard, server: EngineGuard) -> None:
    """Step both guards' engines to completion, pumping bytes in memory.

    The server steps first, before anything has arrived, as the server's
    TLSStream does.
    """
    client_engine, server_engine = client._engine, server._engine
    client_done = server_done = False
    for _ in range(10):
        if not server_done:
            server_done = await server.handshake_step()
        transfer(server_engine, client_engine)
        if not client_done:
            client_done = await client.handshake_step()
        transfer(client_engine, server_engine)
        if client_done and server_done:
            return
    raise AssertionError("handshake did not converge")


@pytest.mark.parametrize(
    ("handshakes", "mutual", "server_threads", "client_threads"),
    [
        # Server: the empty first step and the answer to the ClientHello in
        # threads, reading the Finished inline (unless it verifies a client
        # certificate). Client: its two steps (the ClientHello, then
        # verifying the server and sending Finished) both in threads.
        (True, False, 2, 2),
        (True, True, 3, 2),
        (False, False, 0, 0),
        (False, True, 0, 0),
    ],
)
async def test_handshake_steps_run_where_the_settings_and_cost_say(
    pki: PKIFiles, handshakes: bool, mutual: bool, server_threads: int, client_threads: int
) -> None:
    client_engine, server_engine = engines(pki, mutual=mutual)
    settings = OffloadSettings(handshakes=handshakes)
    client = EngineGuard(client_engine, CountingOffload(settings))
    server = EngineGuard(server_engine, CountingOffload(settings))
    await run_handshake(client, server)
    assert client_engine.handshake_done and server_engine.handshake_done
    assert isinstance(client.offload, CountingOffload)
    assert isinstance(server.offload, CountingOffload)
    assert len(server.offload.threads) == server_threads
    assert len(client.offload.threads) == client_threads
    assert threading.get_ident() not in server.offload.threads + client.offload.threads


# -- the decision: records -----------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "nbytes", "offloaded"),
    [
        (1024, 0, False),
        (1024, 1023, False),
        (1024, 1024, True),
        (1024, 1 << 20, True),
        (0, 0, False),  # 0: records never leave the loop
        (0, 1 << 30, False),
        (256 * 1024, 64 * 1024, False),  # the default: nearly every record inline
        (256 * 1024, 256 * 1024, True),
    ],
)
async def test_records_go_to_a_thread_at_the_threshold(
    pki: PKIFiles, threshold: int, nbytes: int, offloaded: bool
) -> None:
    _, server = engines(pki)
    offload = CountingOffload(OffloadSettings(record_threshold=threshold))
    guard = EngineGuard(server, offload)
    assert guard.offloads_records(nbytes) is offloaded
    result = await guard.record(lambda: "inline call", nbytes, in_thread=lambda: "thread call")
    assert result == ("thread call" if offloaded else "inline call")
    assert len(offload.threads) == int(offloaded)


async def test_offloaded_record_without_an_alternative_runs_the_same_call(
    pki: PKIFiles,
) -> None:
    _, server = engines(pki)
    offload = CountingOffload(OffloadSettings(record_threshold=10))
    guard = EngineGuard(server, offload)
    assert await guard.record(threading.get_ident, 10) in offload.threads
