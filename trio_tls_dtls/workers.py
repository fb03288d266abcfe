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
  the keys stay shared), at most ``max_restarts`` times per
  ``restart_window`` seconds; beyond that it stops everything and exits 1
  rather than spin in a crash loop;
* on SIGINT/SIGTERM sends SIGTERM to every worker (each drains as a single
  process does), waits for them, and exits 0 if they all drained; a second
  signal is passed on as well (each worker then stops at once) and the
  exit status is 1;
* on SIGHUP calls *prepare* again (new certificates, new ticket keys, the
  same cookie secret if it comes from a file), starts a new generation of
  workers from it and drains the old one. If *prepare* fails (a bad file),
  the running workers are kept and the reason is logged.
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
from typing import Generic, TypeVar

from .errors import ConfigError, TLSDError

__all__ = ["Supervisor", "worker_count"]

logger = logging.getLogger(__name__)

P = TypeVar("P")

_Mask = set[int | signal.Signals]
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
_POLL = 0.5


def worker_count(value: int | str) -> int:
    """``auto`` (the CPU count) or a positive integer; a ConfigError otherwise."""
    if value == "auto":
        return os.cpu_count() or 1
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
    forked child and returns its exit status.
    """

    count: int
    prepare: Callable[[], P]
    run_worker: Callable[[int, P], int]
    max_restarts: int = 10
    restart_window: float = 60.0
    restarts: int = 0
    """Workers restarted after an unexpected exit so far."""
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _restart_times: deque[float] = field(default_factory=deque)
    _generation: int = 0
    _state: P | None = None

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped; the exit status."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            return self._supervise(old_mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    @property
    def pids(self) -> list[int]:
        """The workers' process IDs, by worker index."""
        return [w.pid for w in sorted(self._workers.values(), key=lambda w: w.index)]

    # -- the parent's loop ---------------------------------------------------------

    def _supervise(self, old_mask: _Mask) -> int:
        self._state = self.prepare()
        for index in range(self.count):
            self._spawn(index, old_mask)
        logger.info("started %d workers: pids %s", self.count, self.pids)
        stopping = forced = False
        failed = False
        while self._workers:
            info = signal.sigtimedwait(_SIGNALS, _POLL)
            signum = info.si_signo if info is not None else None
            for worker, status in self._reap():
                current = worker.generation == self._generation
                if stopping or not current:
                    failed = failed or (stopping and current and status != 0)
                    continue
                logger.error(
                    "worker %d (pid %d) exited unexpectedly (%s): restarting",
                    worker.index,
                    worker.pid,
                    _describe_status(status),
                )
                if not self._may_restart():
                    logger.error(
                        "%d restarts within %gs: giving up, stopping all workers",
                        self.max_restarts,
                        self.restart_window,
                    )
                    stopping = failed = True
                    self._signal_all(signal.SIGTERM)
                    continue
                self.restarts += 1
                self._spawn(worker.index, old_mask)
            if signum in (signal.SIGINT, signal.SIGTERM):
                name = signal.Signals(signum).name
                if stopping:
                    logger.warning("%s received again: stopping the workers now", name)
                    forced = True
                else:
                    logger.info("%s received: draining %d workers", name, len(self._workers))
                    stopping = True
                self._signal_all(signal.SIGTERM)
            elif signum == signal.SIGHUP and not stopping:
                self._reload(old_mask)
        return 1 if forced or failed else 0

    def _spawn(self, index: int, old_mask: _Mask) -> None:
        assert self._state is not None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                status = self.run_worker(index, self._state)
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

    def _may_restart(self) -> bool:
        now = time.monotonic()
        times = self._restart_times
        while times and now - times[0] > self.restart_window:
            times.popleft()
        if len(times) >= self.max_restarts:
            return False
        times.append(now)
        return True

    def _signal_all(self, signum: signal.Signals) -> None:
        for pid in list(self._workers):
            _kill(pid, signum)

    def _reload(self, old_mask: _Mask) -> None:
        try:
            state = self.prepare()
        except TLSDError as exc:
            logger.error("reload failed, keeping the running workers: %s", exc)
            return
        old = list(self._workers.values())
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
