"""Several worker processes on one port, supervised by a parent (``serve --workers N``).

The parent never runs Trio. It calls *prepare* (which builds the SSL
contexts and the DTLS cookie secret), then forks the workers; each worker
binds the TCP and UDP ports itself with SO_REUSEPORT and runs the ordinary
service. Because the contexts were built before the fork, every worker holds
the same session-ticket keys (OpenSSL makes them when a context is created)
and the same cookie secret: a session resumes, and a cookie verifies,
whichever worker the kernel hands the next connection or datagram to.

The parent:

* restarts a worker that dies unexpectedly, from the same prepared state (so
  the keys stay shared), after a backoff that doubles with each restart in
  the last ``restart_window`` seconds (``restart_backoff`` up to
  ``max_backoff``), and at most ``max_restarts`` times per window; beyond
  that it stops everything and exits 1 rather than spin in a crash loop.
  Signals are still handled while a restart waits;
* on SIGINT/SIGTERM sends SIGTERM to every worker (each drains as a single
  process does), waits for them, and exits 0 if they all drained; a second
  signal is passed on as well (each worker then stops at once) and the
  exit status is 1. The parent reads signals by the same table and
  drain-then-stop rule as the workers (:mod:`trio_tls_dtls.service.signals`),
  with ``sigtimedwait`` instead of Trio;
* on SIGHUP calls *prepare* again (new certificates, the same
  session-ticket keys, the cookie secret read again if it comes from a
  file), starts a new generation of workers from it and drains the old one.
  If *prepare* fails (a bad file), the running workers are kept and the
  reason is logged. A SIGHUP while stopping is ignored: a new generation
  would only be stopped in turn;
* does the same when *reload_due* says so: :func:`shared_state_factory`'s
  says so when the certificate files changed (looked at every
  ``reload_interval``) and when the session-ticket keys are due to rotate
  (every ``ticket_key_rotation``). Both happen here, not in the workers, so
  that every worker keeps one set of keys; a new generation is how a worker
  gets new ones.

Each worker runs :func:`~trio_tls_dtls.service.serving_process.serve_process`,
exactly as a single process does, in a process group of its own (so that
a Ctrl-C on the terminal reaches the parent alone, which passes one SIGTERM
on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar, cast

import trio

from ..core.errors import ConfigError, TLSDError
from ..core.settings import ServerSettings
from ..drivers.dtls.server import DTLSHandler, dtls_echo_handler
from ..drivers.offload import CryptoOffload
from ..drivers.tls.server import TLSHandler, echo_handler
from .cpu_quota import usable_cpus
from .log_format import status_line
from .sd_notify import Notifier, process_notifier
from .service import Service
from .serving_process import ProcessHooks, serve_process
from .shared_state import SharedState, SharedStateSource, shared_state_factory
from .signals import HANDLED_SIGNALS, Request, StopRequests
from .supervisor_notify import WAITING_POLL, NotifyRelay

__all__ = [
    "SharedState",
    "Supervisor",
    "restart_delay",
    "serve_workers",
    "shared_state_factory",
    "worker_count",
    "worker_offload",
]

logger = logging.getLogger(__name__)

P = TypeVar("P")

_Mask = set[int | signal.Signals]
# The operator's signals, and SIGCHLD to hear of a worker's exit at once.
_WAITED_SIGNALS = {*HANDLED_SIGNALS, signal.SIGCHLD}
_POLL = 0.5


def worker_count(value: int | str) -> int:
    """``auto`` (the usable CPUs, see :mod:`.cpu_quota`) or a positive integer.

    A ConfigError otherwise. ``auto`` logs what it decided and why.
    """
    if value == "auto":
        decision = usable_cpus()
        logger.info("workers auto: %d (%s)", decision.count, decision.reason)
        return decision.count
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'workers must be a positive integer or "auto", not {value!r}')
    return value


@dataclass
class _Worker:
    index: int
    generation: int
    pid: int


@dataclass
class Supervisor(Generic[P]):
    """Runs *count* workers; see the module docstring.

    *prepare* runs in the parent (at start and on SIGHUP) and returns the
    state every worker inherits; *run_worker(index, state)* runs in each
    forked child and returns its exit status. *reload_due(now)*, if given,
    is asked about twice a second (*now* is ``time.monotonic()``): a reason
    in words rolls the workers as SIGHUP does.
    """

    count: int
    prepare: Callable[[], P]
    run_worker: Callable[[int, P], int]
    reload_due: Callable[[float], str | None] | None = None
    max_restarts: int = 10
    restart_window: float = 60.0
    restart_backoff: float = 0.1
    """Delay before the first restart in a window; doubled for each later one."""
    max_backoff: float = 5.0
    restarts: int = 0
    """Workers restarted after an unexpected exit so far."""
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _restart_times: deque[float] = field(default_factory=deque)
    _pending: dict[int, float] = field(default_factory=dict)  # index -> when to restart
    _generation: int = 0
    _state: P | None = None
    _notify: NotifyRelay = field(default_factory=lambda: NotifyRelay(Notifier()))

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped; the exit status."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_SIGNALS)
        try:
            return self._supervise(old_mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._notify.close()

    @property
    def pids(self) -> list[int]:
        """The workers' process IDs, by worker index."""
        return [w.pid for w in sorted(self._workers.values(), key=lambda w: w.index)]

    # -- the parent's loop ---------------------------------------------------------

    def _supervise(self, old_mask: _Mask) -> int:
        self._notify = NotifyRelay(process_notifier())  # systemd hears the supervisor only
        self._state = self.prepare()
        for index in range(self.count):
            self._spawn(index, old_mask)
        logger.info("started %d workers: pids %s", self.count, self.pids)
        stops = StopRequests()  # the same rule as each worker's: first drains, second cuts
        failed = False
        while self._workers or (self._pending and not stops.draining):
            info = signal.sigtimedwait(_WAITED_SIGNALS, self._wait_time())
            self._notify.poll(self._workers, self.pids_of(self._generation), self.count)
            for worker, status in self._reap():
                current = worker.generation == self._generation
                if stops.draining or not current:
                    failed = failed or (stops.draining and current and status != 0)
                    continue
                delay = self._restart_delay()
                if delay is None:
                    logger.error(
                        "worker %d (pid %d) exited unexpectedly (%s); %d restarts within %gs:"
                        " giving up, stopping all workers",
                        worker.index,
                        worker.pid,
                        _describe_status(status),
                        self.max_restarts,
                        self.restart_window,
                    )
                    stops.stop_requested()  # as a first signal would: the workers drain
                    failed = True
                    self._pending.clear()
                    self._signal_all(signal.SIGTERM)
                    continue
                logger.error(
                    "worker %d (pid %d) exited unexpectedly (%s): restarting in %.2fs",
                    worker.index,
                    worker.pid,
                    _describe_status(status),
                    delay,
                )
                self._pending[worker.index] = time.monotonic() + delay
            if not stops.draining:
                self._restart_due(old_mask)
            if info is not None:
                self._on_signal(info.si_signo, stops, old_mask)
            due = self.reload_due
            if due is not None and not stops.draining and (why := due(time.monotonic())):
                logger.info("%s: reloading", why)
                self._reload(old_mask)
        return stops.exit_status(failed=failed)

    def _on_signal(self, signum: int, stops: StopRequests, old_mask: _Mask) -> None:
        """The parent's side of the signal table: pass stops on, roll workers on reload."""
        request = stops.on_signal(signum)  # None for SIGCHLD: it only wakes the loop to reap
        name = signal.Signals(signum).name
        if request is Request.DRAIN:
            logger.info("%s received: draining %d workers", name, len(self._workers))
            self._notify.stopping()
            self._pending.clear()  # a worker waiting to restart stays down
            self._signal_all(signal.SIGTERM)
        elif request is Request.STOP_NOW:
            # One SIGTERM each again: every worker then counts its second and cuts.
            logger.warning("%s received again: stopping the workers now", name)
            self._signal_all(signal.SIGTERM)
        elif request is Request.RELOAD and not stops.draining:
            self._reload(old_mask)

    def _spawn(self, index: int, old_mask: _Mask) -> None:
        state = cast(P, self._state)  # set by prepare() before any spawn; P may be None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                # Its own process group: a Ctrl-C on the terminal (SIGINT to the
                # foreground group) reaches the parent only, which passes one
                # SIGTERM on. Were the worker to get both, it would take the
                # second for "stop now" and skip the drain.
                os.setpgid(0, 0)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                self._notify.in_worker()
                status = self.run_worker(index, state)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self._workers[pid] = _Worker(index, self._generation, pid)

    def _reap(self) -> list[tuple[_Worker, int]]:
        ended = []
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self._workers.pop(pid, None)
            if worker is not None:
                ended.append((worker, os.waitstatus_to_exitcode(status)))
        return ended

    def _restart_delay(self) -> float | None:
        """Record a restart; how long to wait before it, or None past the cap."""
        now = time.monotonic()
        times = self._restart_times
        while times and now - times[0] > self.restart_window:
            times.popleft()
        if len(times) >= self.max_restarts:
            return None
        delay = restart_delay(len(times), self.restart_backoff, self.max_backoff)
        times.append(now)
        return delay

    def _restart_due(self, old_mask: _Mask) -> None:
        now = time.monotonic()
        for index, when in sorted(self._pending.items()):
            if when <= now:
                del self._pending[index]
                self.restarts += 1
                self._spawn(index, old_mask)
                logger.info("worker %d restarted: pid %d", index, self._pid_of(index))

    def _wait_time(self) -> float:
        poll = WAITING_POLL if self._notify.waiting else _POLL  # owed: systemd's READY=1
        if not self._pending:
            return poll
        soonest = min(self._pending.values()) - time.monotonic()
        return min(poll, max(soonest, 0.001))

    def _pid_of(self, index: int) -> int:
        return max(
            (w for w in self._workers.values() if w.index == index),
            key=lambda w: w.generation,
        ).pid

    def _signal_all(self, signum: signal.Signals) -> None:
        for pid in list(self._workers):
            _kill(pid, signum)

    def _reload(self, old_mask: _Mask) -> None:
        self._notify.reloading()
        try:
            state = self.prepare()
        except TLSDError as exc:
            logger.error("reload failed, keeping the running workers: %s", exc)
            self._notify.reload_failed()
            return
        old = list(self._workers.values())
        self._pending.clear()  # the new generation starts every index
        self._state = state
        self._generation += 1
        for index in range(self.count):
            self._spawn(index, old_mask)
        for worker in old:
            _kill(worker.pid, signal.SIGTERM)
        logger.info(
            "reloaded: new workers %s started, old workers %s draining",
            self.pids_of(self._generation),
            [w.pid for w in old],
        )

    def pids_of(self, generation: int) -> list[int]:
        """The process IDs of the workers of *generation* still running."""
        return [w.pid for w in self._workers.values() if w.generation == generation]


def restart_delay(recent: int, base: float, cap: float) -> float:
    """The backoff before a restart when *recent* restarts happened in the window.

    0 recent restarts: *base*; each one more doubles it, up to *cap*.
    """
    return float(min(cap, base * 2 ** min(recent, 30)))


def _kill(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        os.kill(pid, signum)


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- a library entry point -------------------------------------------------------


def worker_offload(settings: ServerSettings, workers: int) -> CryptoOffload:
    """One worker's crypto offload: its share of the usable CPUs.

    With a worker per CPU, each has one: its handshakes stay on its loop
    (``OffloadSettings.handshakes="auto"``), as a thread could only take
    time from another worker.
    """
    return CryptoOffload(settings.offload, cores=max(1, usable_cpus().count // workers))


def serve_workers(
    settings: ServerSettings,
    port: int,
    *,
    count: int,
    host: str | None = None,
    tls: bool = True,
    dtls: bool = True,
    tls_handler: TLSHandler = echo_handler,
    dtls_handler: DTLSHandler = dtls_echo_handler,
    max_restarts: int = 10,
    restart_window: float = 60.0,
    hooks: ProcessHooks | None = None,
) -> int:
    """Serve on *port* from *count* supervised worker processes; the exit status.

    The library form of ``trio-tlsd serve --workers``, with your handlers:
    call it from plain Python (never inside ``trio.run``: it forks). It
    returns when SIGINT/SIGTERM has drained every worker (0), or after a
    second signal or too many crashes (1). Each worker runs
    :func:`~trio_tls_dtls.service.serving_process.serve_process`: it prints
    ``trio-tlsd: worker K (pid P): serving ...`` when it is bound (or what
    ``hooks.on_serving`` prints), and a summary line when it stops. *port*
    must not be 0.
    """
    if port == 0:
        raise ConfigError("serve_workers needs a fixed port (with port 0 each would get its own)")
    count = worker_count(count)

    def run_worker(index: int, shared: SharedState) -> int:
        service = Service(
            settings,
            tls=tls,
            dtls=dtls,
            tls_handler=tls_handler,
            dtls_handler=dtls_handler,
            tls_context=shared.tls,
            dtls_context=shared.dtls,
            offload=worker_offload(settings, count),
            cookies=shared.cookies,
        )
        return trio.run(partial(serve_process, service, port, host, worker=index, hooks=hooks))

    source = SharedStateSource(settings, tls=tls, dtls=dtls)
    supervisor = Supervisor(
        count,
        source,
        run_worker,
        reload_due=source.reload_due,
        max_restarts=max_restarts,
        restart_window=restart_window,
    )
    status = supervisor.run()
    print(
        status_line(
            f"trio-tlsd: all workers stopped ({supervisor.restarts} restarted after a crash)"
        ),
        file=sys.stderr,
    )
    return status
