"""EngineGuard: one thread per SSL object, and the one inline-or-thread decision.

The lock tests hold an offloaded call inside its worker thread (on a
threading.Event) and look at what the loop's tasks can do meanwhile; they
wait on events and on trio.testing.wait_all_tasks_blocked, never on time.
The decision tests run real handshakes between two engines in memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import trio
import trio.testing

from tests.conftest import PKIFiles
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.core.settings import OffloadSettings
from trio_tls_dtls.drivers import offload as offload_module
from trio_tls_dtls.drivers.engine_guard import (
    EngineGuard,
    handshake_step_is_costly,
    handshake_step_is_expensive,
)
from trio_tls_dtls.drivers.offload import CryptoOffload, usable_cores

T = TypeVar("T")

THREAD_START_LIMIT = 30.0  # a safety net against a hang, not an assertion about time


class CountingOffload(CryptoOffload):
    """Counts the calls that really ran in a worker thread."""

    def __init__(self, settings: OffloadSettings, *, cores: int | None = None) -> None:
        super().__init__(settings)
        self.threads: list[int] = []
        if cores is not None:
            self.cores = cores

    async def run(self, fn: Callable[[], T]) -> T:
        def in_thread() -> T:
            self.threads.append(threading.get_ident())
            return fn()

        return await super().run(in_thread)


def engines(pki: PKIFiles, *, mutual: bool = False) -> tuple[TLSEngine, TLSEngine]:
    """A client and a server engine; the server's key is whatever *pki* has (ECDSA or RSA)."""
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
    assert not handshake_step_is_expensive(client)  # makes the ClientHello
    assert not client.do_handshake()
    assert not handshake_step_is_costly(server)  # nothing received yet: nothing to do
    assert not server.do_handshake()
    assert not handshake_step_is_costly(server)  # still no ClientHello
    transfer(client, server)
    assert handshake_step_is_costly(server)  # answers the ClientHello
    assert not handshake_step_is_expensive(server)  # an ECDSA signature
    assert not server.do_handshake()
    transfer(server, client)
    # Reading the client's Finished costs little, unless it carries a
    # certificate to verify; that one costs several hops.
    assert handshake_step_is_costly(server) is mutual
    assert handshake_step_is_expensive(server) is mutual
    assert handshake_step_is_costly(client)  # verifies the server's chain
    assert handshake_step_is_expensive(client)


def test_an_rsa_servers_answer_is_expensive(rsa_pki: PKIFiles) -> None:
    client, server = engines(rsa_pki)
    assert not client.do_handshake()
    transfer(client, server)
    assert handshake_step_is_costly(server)
    assert handshake_step_is_expensive(server)


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
        # Server: the answer to the ClientHello in a thread, reading the
        # Finished inline (unless it verifies a client certificate); the
        # step before the ClientHello arrived does nothing and stays inline.
        # Client: its two steps (the ClientHello, then verifying the server
        # and sending Finished) both in threads.
        (True, False, 1, 2),
        (True, True, 2, 2),
        (False, False, 0, 0),
        (False, True, 0, 0),
        # "auto" with a core to spare and an idle loop: only the expensive
        # steps (verifying a certificate chain) go.
        ("auto", False, 0, 1),
        ("auto", True, 1, 1),
    ],
)
async def test_handshake_steps_run_where_the_settings_and_cost_say(
    pki: PKIFiles,
    handshakes: bool | str,
    mutual: bool,
    server_threads: int,
    client_threads: int,
) -> None:
    client_engine, server_engine = engines(pki, mutual=mutual)
    settings = OffloadSettings(handshakes=handshakes)  # type: ignore[arg-type]
    client = EngineGuard(client_engine, CountingOffload(settings, cores=2))
    server = EngineGuard(server_engine, CountingOffload(settings, cores=2))
    await run_handshake(client, server)
    assert client_engine.handshake_done and server_engine.handshake_done
    assert isinstance(client.offload, CountingOffload)
    assert isinstance(server.offload, CountingOffload)
    assert len(server.offload.threads) == server_threads
    assert len(client.offload.threads) == client_threads
    assert threading.get_ident() not in server.offload.threads + client.offload.threads


def auto_guards(pki: PKIFiles, cores: int) -> tuple[EngineGuard, EngineGuard]:
    client_engine, server_engine = engines(pki)
    settings = OffloadSettings(handshakes="auto")
    return (
        EngineGuard(client_engine, CountingOffload(settings, cores=cores)),
        EngineGuard(server_engine, CountingOffload(settings, cores=cores)),
    )


def server_threads(guard: EngineGuard) -> int:
    assert isinstance(guard.offload, CountingOffload)
    return len(guard.offload.threads)


async def test_auto_never_offloads_with_one_core(rsa_pki: PKIFiles) -> None:
    # Even an RSA signature: a thread could not run beside the loop.
    client, server = auto_guards(rsa_pki, cores=1)
    await run_handshake(client, server)
    assert server_threads(server) == server_threads(client) == 0


async def test_auto_offloads_an_rsa_answer_with_a_core_to_spare(rsa_pki: PKIFiles) -> None:
    client, server = auto_guards(rsa_pki, cores=2)
    await run_handshake(client, server)
    assert server_threads(server) == 1


@pytest.mark.parametrize(("machine_busy", "offloaded"), [(False, 1), (True, 0)])
async def test_auto_offloads_an_ecdsa_answer_when_the_loop_has_a_backlog(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch, machine_busy: bool, offloaded: int
) -> None:
    # A backlog: other tasks ready to run while the step would hold the
    # loop. It is offloaded unless every core is already busy.
    monkeypatch.setattr(offload_module, "_machine_busy", lambda cores: machine_busy)
    client, server = auto_guards(pki, cores=2)
    client_engine, server_engine = client._engine, server._engine
    assert not await client.handshake_step()
    transfer(client_engine, server_engine)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.lowlevel.checkpoint)  # runnable, not yet run
        assert trio.lowlevel.current_statistics().tasks_runnable >= 1
        assert server.offloads_handshake_step() is bool(offloaded)
        assert not await server.handshake_step()
    assert server_threads(server) == offloaded


def test_usable_cores_are_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert CryptoOffload().cores == usable_cores()
    assert CryptoOffload(cores=3).cores == 3  # what the service passes


def test_handshakes_setting_is_true_false_or_auto() -> None:
    assert OffloadSettings().handshakes == "auto"  # the default
    for value in ("sometimes", 1, None):
        with pytest.raises(ConfigError, match=r"offload\.handshakes"):
            OffloadSettings(handshakes=value)  # type: ignore[arg-type]


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
