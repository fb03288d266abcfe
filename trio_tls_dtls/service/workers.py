"""Several worker processes on one port, supervised by a parent (``serve --workers N``).

The parent never runs Trio. It opens the listening sockets, one set per
worker slot, and keeps them for as long as it runs (:mod:`.worker_sockets`
says why: a DTLS session must not move when another worker dies); it calls
*prepare* (which builds the SSL contexts and the DTLS cookie secret), then
forks the workers; worker *k* adopts slot *k*'s sockets and runs the
ordinary service. Because the contexts were built before the fork, every
worker holds the same session-ticket keys (OpenSSL makes them when a context
is created) and the same cookie secret: a session resumes, and a cookie
verifies, whichever worker the kernel hands the next connection or datagram
to. Each worker has a lifeline to the parent (:mod:`.lifeline`): when the
parent is gone, however it went, the worker drains and exits.

The parent:

* restarts a worker that dies unexpectedly, from the same prepared state (so
  the keys stay shared), after a backoff that doubles with each restart of
  that worker slot in the last ``restart_window`` seconds
  (``restart_backoff`` up to ``max_backoff``), and at most ``max_restarts``
  times per slot and window (:class:`~.restart_budget.RestartBudget`);
  beyond that it stops everything and exits 1 rather than spin in a crash
  loop. Signals are still handled while a restart waits;
* on SIGINT/SIGTERM sends SIGTERM to every worker (each drains as a single
  process does), waits for them, and exits 0 if they all drained; a second
  signal is passed on as well (each worker then stops at once) and the
  exit status is 1. The parent reads signals by the same table and
  drain-then-stop rule as the workers (:mod:`trio_tls_dtls.service.signals`),
  with ``sigtimedwait`` instead of Trio;
* on SIGHUP calls *prepare* again (new certificates, the same
  session-ticket keys, the cookie secret read again if it comes from a
  file), starts a new generation of workers from it and drains the old one
  (told by its lifeline that it was replaced, or, with ``tell_replaced``
  off, by SIGTERM); an older generation still draining is left alone. If
  *prepare* fails (a bad file), the running workers are kept and the reason
  is logged. A SIGHUP while stopping is ignored: a new generation would
  only be stopped in turn;
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
from .cpu_quota import usable_cpus, worker_count
from .lifeline import Lifelines
from .log_format import status_line
from .restart_budget import RestartBudget, restart_delay
from .sd_notify import Notifier, process_notifier
from .service import Service
from .serving_process import OperatorPorts, ProcessHooks, serve_process
from .shared_state import SharedState, SharedStateSource, shared_state_factory
from .signals import HANDLED_SIGNALS, Request, StopRequests
from .supervisor_endpoint import open_with_endpoint
from .supervisor_notify import WAITING_POLL, NotifyRelay
from .worker_sockets import open_slot_sockets

__all__ = [
    "RestartBudget",
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


@dataclass
class _Worker:
    index: int
    generation: int
    pid: int
    draining: bool = False
    """Told to stop (a SIGTERM, or replaced by a reload): a second SIGTERM would cut it."""


@dataclass
class Supervisor(Generic[P]):
    """Runs *count* workers; see the module docstring.

    *prepare* runs in the parent (at start and on SIGHUP) and returns the
    state every worker inherits; *run_worker(index, state)* runs in each
    forked child and returns its exit status (in the child, :attr:`lifeline`
    is the fd of its :mod:`.lifeline`). *reload_due(now)*, if given, is asked
    about twice a second (*now* is ``time.monotonic()``): a reason in words
    rolls the workers as SIGHUP does. With *tell_replaced*, a reload tells
    the old workers through their lifelines that they were replaced (they
    must watch it, as :func:`~.serving_process.serve_process` does);
    without, it sends them SIGTERM. *on_stopping* is called once, in the
    parent, when the workers are told to stop.
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
    tell_replaced: bool = False
    on_stopping: Callable[[], object] | None = None
    restarts: int = 0
    """Workers restarted after an unexpected exit so far."""
    lifeline: int | None = None
    """In a worker: the read end of its lifeline."""
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _budget: RestartBudget = field(init=False)
    _lifelines: Lifelines = field(default_factory=Lifelines)
    _pending: dict[int, float] = field(default_factory=dict)  # index -> when to restart
    _generation: int = 0
    _state: P | None = None
    _notify: NotifyRelay = field(default_factory=lambda: NotifyRelay(Notifier()))

    def __post_init__(self) -> None:
        self._budget = RestartBudget(
            self.max_restarts, self.restart_window, self.restart_backoff, self.max_backoff
        )

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped; the exit status."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_SIGNALS)
        try:
            return self._supervise(old_mask)
        finally:
            # Every worker has exited; or the parent is failing, and its
            # workers see the end of their lifelines and drain.
            self._lifelines.close()
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
                delay = self._budget.next_delay(worker.index, now=time.monotonic())
                if delay is None:
                    logger.error(
                        "worker %d (pid %d) exited unexpectedly (%s); %d restarts of worker %d"
                        " within %gs: giving up, stopping all workers",
                        worker.index,
                        worker.pid,
                        _describe_status(status),
                        self.max_restarts,
                        worker.index,
                        self.restart_window,
                    )
                    stops.stop_requested()  # as a first signal would: the workers drain
                    failed = True
                    self._stop_all()
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
            self._stop_all()
        elif request is Request.STOP_NOW:
            # One SIGTERM each again: every worker then counts its second and cuts.
            logger.warning("%s received again: stopping the workers now", name)
            for worker in list(self._workers.values()):
                _kill(worker.pid, signal.SIGTERM)
        elif request is Request.RELOAD and not stops.draining:
            self._reload(old_mask)

    def _stop_all(self) -> None:
        """The first stop: a worker waiting to restart stays down, the others drain."""
        self._pending.clear()
        for worker in list(self._workers.values()):
            self._drain(worker)
        if self.on_stopping is not None:
            self.on_stopping()

    def _drain(self, worker: _Worker, *, replaced: bool = False) -> None:
        """Tell *worker* to drain, once: a second SIGTERM would cut its drain."""
        if worker.draining:
            return
        worker.draining = True
        if not (replaced and self.tell_replaced and self._lifelines.tell_replaced(worker.pid)):
            _kill(worker.pid, signal.SIGTERM)

    def _spawn(self, index: int, old_mask: _Mask) -> None:
        state = cast(P, self._state)  # set by prepare() before any spawn; P may be None
        sys.stdout.flush()
        sys.stderr.flush()
        pipe = self._lifelines.before_fork()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                # Its own process group: a Ctrl-C on the terminal (SIGINT to the
                # foreground group) reaches the parent only, which passes one
                # SIGTERM on. Were the worker to get both, it would take the
                # second for "stop now" and skip the drain.
                os.setpgid(0, 0)
                self.lifeline = self._lifelines.in_worker(pipe)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                self._notify.in_worker()
                status = self.run_worker(index, state)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self._lifelines.in_supervisor(pid, pipe)
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
            self._lifelines.ended(pid)
            if worker is not None:
                ended.append((worker, os.waitstatus_to_exitcode(status)))
        return ended

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

    def _reload(self, old_mask: _Mask) -> None:
        self._notify.reloading()
        try:
            state = self.prepare()
        except TLSDError as exc:
            logger.error("reload failed, keeping the running workers: %s", exc)
            self._notify.reload_failed()
            return
        # Only the current generation: an older one still draining from an
        # earlier reload must not take this for a second stop request.
        old = [w for w in self._workers.values() if w.generation == self._generation]
        self._pending.clear()  # the new generation starts every index
        self._state = state
        self._generation += 1
        for index in range(self.count):
            self._spawn(index, old_mask)
        for worker in old:
            self._drain(worker, replaced=True)
        logger.info(
            "reloaded: new workers %s started, old workers %s draining",
            self.pids_of(self._generation),
            [w.pid for w in old],
        )

    def pids_of(self, generation: int) -> list[int]:
        """The process IDs of the workers of *generation* still running."""
        return [w.pid for w in self._workers.values() if w.generation == generation]


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
    operator: OperatorPorts | None = None,
) -> int:
    """Serve on *port* from *count* supervised worker processes; the exit status.

    The library form of ``trio-tlsd serve --workers``, with your handlers:
    call it from plain Python (never inside ``trio.run``: it forks). It
    returns when SIGINT/SIGTERM has drained every worker (0), or after a
    second signal or too many crashes (1). Each worker runs
    :func:`~trio_tls_dtls.service.serving_process.serve_process`: it prints
    ``trio-tlsd: worker K (pid P): serving ...`` when it is bound (or what
    ``hooks.on_serving`` prints), and a summary line when it stops. *port*
    must not be 0. With *operator* ports: on ``metrics_port`` P, the
    supervisor answers ``/metrics`` (every worker's added up), ``/healthz``
    and ``/readyz`` for all workers, one target whatever *count* is
    (:mod:`.supervisor_endpoint`); on ``health_port`` H, worker K answers
    ``/healthz`` and ``/readyz`` on H+K.

    Every port is bound here, before any worker starts (see
    :mod:`.worker_sockets`): a port in use raises
    :class:`~trio_tls_dtls.core.errors.ListenError`.
    """
    if port == 0:
        raise ConfigError("serve_workers needs a fixed port (with port 0 each would get its own)")
    count = worker_count(count)
    ports = operator if operator is not None else OperatorPorts()
    slots, endpoint = open_with_endpoint(
        ports.metrics_port,
        ports.metrics_host,
        partial(
            open_slot_sockets,
            count,
            port,
            host,
            tls=tls,
            dtls=dtls,
            health_port=ports.health_port,
            health_host=ports.health_host,
        ),
        restarts=lambda: supervisor.restarts,
    )

    def run_worker(index: int, shared: SharedState) -> int:
        if endpoint is not None:
            endpoint.close()  # the supervisor's: a worker holding it would keep port P bound
        for other, sockets in enumerate(slots):
            if other != index:  # another slot's sockets would keep its place in the group
                sockets.close()
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
        run = partial(
            serve_process,
            service,
            port,
            host,
            worker=index,
            hooks=hooks,
            inherited=slots[index],
            lifeline=supervisor.lifeline,
        )
        return trio.run(run)

    def close_slots() -> None:
        if endpoint is not None:
            endpoint.stopping = "stopping: the workers drain"
        for sockets in slots:
            sockets.close()

    source = SharedStateSource(settings, tls=tls, dtls=dtls)
    supervisor = Supervisor(
        count,
        source,
        run_worker,
        reload_due=source.reload_due,
        max_restarts=max_restarts,
        restart_window=restart_window,
        tell_replaced=True,
        # Once the workers drain, a new connection is refused, not queued
        # for nobody.
        on_stopping=close_slots,
    )
    if endpoint is not None:
        endpoint.start()
    try:
        status = supervisor.run()
    finally:
        close_slots()
        if endpoint is not None:
            endpoint.stop()
    print(
        status_line(
            f"trio-tlsd: all workers stopped ({supervisor.restarts} restarted after a crash)"
        ),
        file=sys.stderr,
    )
    return status
