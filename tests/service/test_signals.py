"""Signals and drain in one place: the table, the drain-then-stop rule, the bounded drain.

The serving tests deliver real signals to this process (``os.kill`` to our
own pid) while :func:`serve_process` holds them in
``trio.open_signal_receiver``; the supervisor test sends them to the main
thread, where the supervisor waits for them with ``sigtimedwait``. Every
wait is bounded.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio

from tests.conftest import PKIFiles
from trio_tls_dtls import open_dtls_channel, open_tls_stream
from trio_tls_dtls.core.settings import ServerSettings
from trio_tls_dtls.service.drain import GracefulStop, bounded_drain, serve_until_stopped
from trio_tls_dtls.service.service import Service, serve
from trio_tls_dtls.service.serving_process import ProcessHooks, Serving, serve_process
from trio_tls_dtls.service.signals import (
    EXIT_DRAINED,
    EXIT_STOPPED_AT_ONCE,
    HANDLED_SIGNALS,
    Request,
    StopRequests,
)
from trio_tls_dtls.service.workers import Supervisor

pytestmark = pytest.mark.timeout(60)

# -- the table and the rule, without I/O -------------------------------------------


def test_each_handled_signal_means_what_the_docs_say() -> None:
    assert set(HANDLED_SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for stop in (signal.SIGINT, signal.SIGTERM):
        assert StopRequests().on_signal(stop) is Request.DRAIN
    assert StopRequests().on_signal(signal.SIGHUP) is Request.RELOAD
    for other in (signal.SIGCHLD, signal.SIGUSR1, 0):
        assert StopRequests().on_signal(other) is None


def test_first_stop_drains_second_stops_at_once_and_sets_the_exit_status() -> None:
    requests = StopRequests()
    assert requests.exit_status() == EXIT_DRAINED == 0
    assert requests.on_signal(signal.SIGTERM) is Request.DRAIN
    assert (requests.draining, requests.forced) == (True, False)
    assert requests.exit_status() == EXIT_DRAINED
    assert requests.exit_status(failed=True) == EXIT_STOPPED_AT_ONCE
    # A reload request stays a reload while draining; the caller decides.
    assert requests.on_signal(signal.SIGHUP) is Request.RELOAD
    assert requests.on_signal(signal.SIGINT) is Request.STOP_NOW  # a mix counts too
    assert requests.forced
    assert requests.exit_status() == EXIT_STOPPED_AT_ONCE == 1
    assert requests.on_signal(signal.SIGTERM) is Request.STOP_NOW  # and stays so


def test_a_stop_from_elsewhere_follows_the_same_rule() -> None:
    requests = StopRequests()
    assert requests.stop_requested() is Request.DRAIN  # e.g. the supervisor has gone
    assert requests.on_signal(signal.SIGTERM) is Request.STOP_NOW


# -- one serving process, with real signals -----------------------------------------


@dataclass
class Running:
    """A :func:`serve_process` running in this process."""

    serving: Serving | None = None
    done: trio.Event = field(default_factory=trio.Event)
    status: int | None = None

    @property
    def service(self) -> Service:
        assert self.serving is not None
        return self.serving.service

    async def exit_status(self) -> int:
        with trio.fail_after(15):
            await self.done.wait()
        assert self.status is not None
        return self.status


@asynccontextmanager
async def serving_process(settings: ServerSettings, *, dtls: bool = True) -> AsyncIterator[Running]:
    """serve_process on a loopback port; yields once it serves, waits for its end."""
    running = Running()
    serving = trio.Event()

    async def on_serving(ready: Serving) -> None:
        running.serving = ready
        serving.set()

    async def run(service: Service) -> None:
        hooks = ProcessHooks(on_serving=on_serving)
        running.status = await serve_process(service, 0, "127.0.0.1", hooks=hooks)
        running.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, Service(settings, dtls=dtls))
        with trio.fail_after(10):
            await serving.wait()
        yield running


def signal_self(signum: signal.Signals) -> None:
    os.kill(os.getpid(), signum)


async def test_sigterm_drains_and_the_summary_counts_none_left(
    pki: PKIFiles, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving_process(pki.server_settings()) as running:
        settings = pki.client_settings()
        stream = await open_tls_stream("127.0.0.1", running.service.port, settings=settings)
        channel = await open_dtls_channel("127.0.0.1", running.service.port, settings=settings)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        signal_self(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # our close_notify
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
        await stream.aclose()  # the client closes in turn: the drain completes
        await channel.aclose()
        assert await running.exit_status() == 0
    assert "SIGTERM received: draining 2 open (up to 10s; again to stop now)" in caplog.text
    err = capsys.readouterr().err
    assert "trio-tlsd: drained: TLS: 1 connections, 1 handshakes ok" in err
    assert "; 0 still open when stopped" in err


async def test_a_second_signal_stops_at_once_and_counts_what_it_cut(
    pki: PKIFiles, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The drain could wait 30s for our client, which never closes: only the
    # second signal can end it in time.
    async with serving_process(pki.server_settings(drain_timeout=30.0), dtls=False) as running:
        stream = await open_tls_stream(
            "127.0.0.1", running.service.port, settings=pki.client_settings()
        )
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        signal_self(signal.SIGINT)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # draining
        signal_self(signal.SIGINT)
        assert await running.exit_status() == 1
        await stream.aclose()
    assert "SIGINT received again: stopping now" in caplog.text
    err = capsys.readouterr().err
    assert "trio-tlsd: stopped at once by a second signal: TLS: 1 connections" in err
    assert "; 1 still open when stopped" in err


async def test_the_drain_timeout_cuts_and_says_how_many(
    pki: PKIFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving_process(pki.server_settings(drain_timeout=0.3), dtls=False) as running:
        stream = await open_tls_stream(
            "127.0.0.1", running.service.port, settings=pki.client_settings()
        )
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 0  # a drain, though it had to cut one
        await stream.aclose()
    err = capsys.readouterr().err
    assert "trio-tlsd: drained:" in err
    assert "; 1 still open when stopped" in err


async def test_sighup_reloads_while_serving_and_while_draining(pki: PKIFiles) -> None:
    async with serving_process(pki.server_settings(drain_timeout=30.0), dtls=False) as running:
        service = running.service
        stream = await open_tls_stream(
            "127.0.0.1", running.service.port, settings=pki.client_settings()
        )
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        signal_self(signal.SIGHUP)
        await wait_for(lambda: service.reloads == 1)
        signal_self(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some() == b""
        signal_self(signal.SIGHUP)  # not a stop request: the drain goes on
        await wait_for(lambda: service.reloads == 2)
        assert not running.done.is_set()
        await stream.aclose()
        assert await running.exit_status() == 0


async def test_a_stop_from_a_watcher_task_drains_and_a_signal_then_cuts(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """What a worker watching its supervisor would do: ask, and get the signal rule."""
    caplog.set_level(logging.INFO)
    service = Service(pki.server_settings(drain_timeout=30.0), dtls=False)
    await service.bind(0, "127.0.0.1")
    connected = trio.Event()
    settings = pki.client_settings()

    async def on_serving(stop: GracefulStop) -> None:
        async def watcher() -> None:
            await connected.wait()
            stop.stop("supervisor gone")

        stop.nursery.start_soon(watcher)

    async def client() -> None:
        stream = await open_tls_stream("127.0.0.1", service.port, settings=settings)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        connected.set()
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # the watcher's drain
        signal_self(signal.SIGTERM)  # the second request, by signal: cut now
        await stopped.wait()  # still open when cut
        await stream.aclose()

    stopped = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        with trio.fail_after(15):
            stop = await serve_until_stopped(service, on_serving=on_serving)
        stopped.set()
    assert stop.forced and stop.exit_status == 1
    assert stop.still_open == 1
    assert "supervisor gone received: draining 1 open" in caplog.text
    assert "SIGTERM received again: stopping now" in caplog.text


async def test_bounded_drain_returns_what_was_still_open(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        settings = pki.server_settings(drain_timeout=0.2)
        service: Service = await nursery.start(partial(serve, settings, 0, host="127.0.0.1"))
        stream = await open_tls_stream("127.0.0.1", service.port, settings=pki.client_settings())
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        with trio.fail_after(10):
            assert await bounded_drain(service) == 1  # our client never closes
        nursery.cancel_scope.cancel()  # the cut
    assert service.open_count() == 0
    await stream.aclose()


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


# -- the supervisor reads the same table -----------------------------------------------


class _LogEvents(logging.Handler):
    """Sets an event when a message containing a fragment is logged."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.events = {fragment: threading.Event() for fragment in fragments}

    def emit(self, record: logging.LogRecord) -> None:
        for fragment, event in self.events.items():
            if fragment in record.getMessage():
                event.set()


_OPERATOR_SIGNALS = {signal.SIGTERM, signal.SIGHUP}


def test_supervisor_drains_on_the_first_stop_cuts_on_the_second_and_skips_reload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.service.workers")
    events = _LogEvents("started 1 workers", "draining 1 workers")
    workers_log = logging.getLogger("trio_tls_dtls.service.workers")
    prepared: list[int] = []
    main_thread = threading.get_ident()
    acks, ack = os.pipe()  # the worker writes a byte for each SIGTERM it got

    def worker(index: int, state: None) -> int:
        # SIGTERM stays blocked here (the test blocked it before the fork):
        # each one the supervisor passes on is taken and acknowledged in turn.
        for _ in range(2):
            if signal.sigtimedwait({signal.SIGTERM}, 20) is None:
                return 3
            os.write(ack, b"!")
        return 0

    def acknowledged() -> None:
        ready, _, _ = select.select([acks], [], [], 20)
        assert ready and os.read(acks, 1) == b"!"

    def operator() -> None:
        assert events.events["started 1 workers"].wait(20)
        signal.pthread_kill(main_thread, signal.SIGTERM)  # to the thread in sigtimedwait
        acknowledged()  # the worker is draining
        # SIGHUP while draining rolls no new generation (prepare is not called again).
        signal.pthread_kill(main_thread, signal.SIGHUP)
        signal.pthread_kill(main_thread, signal.SIGTERM)
        acknowledged()  # the second request reached the worker

    supervisor: Supervisor[None] = Supervisor(
        1, prepare=lambda: prepared.append(1), run_worker=worker
    )
    # Blocked before the operator thread exists, so it inherits the mask and
    # a signal can only be taken by the supervisor's sigtimedwait.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _OPERATOR_SIGNALS)
    workers_log.addHandler(events)
    thread = threading.Thread(target=operator, daemon=True)
    try:
        thread.start()
        status = supervisor.run()
        thread.join(20)
    finally:
        while signal.sigtimedwait(_OPERATOR_SIGNALS, 0) is not None:
            pass  # nothing the operator sent may reach the test process unblocked
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        workers_log.removeHandler(events)
        os.close(acks)
        os.close(ack)
    assert not thread.is_alive()
    assert status == 1  # stopped at once by the second request
    assert prepared == [1]
    assert "SIGTERM received: draining 1 workers" in caplog.text
    assert "SIGTERM received again: stopping the workers now" in caplog.text
    assert supervisor.pids == []
