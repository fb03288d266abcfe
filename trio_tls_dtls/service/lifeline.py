"""Lifelines: how a worker learns that its supervisor is gone, or that it has been replaced.

The supervisor makes one pipe per worker just before it forks it, and keeps
the write ends; every worker closes, first thing, every write end it
inherited (its own and its siblings') and watches the read end of its own.

* **End of file** means the supervisor is gone: the read end becomes
  readable with nothing to read exactly when the last copy of the write end
  closes, which is when the supervisor process ends, however it ends
  (SIGKILL, an out-of-memory kill, an exception, a plain ``sys.exit``). The
  worker then asks to stop as a first SIGTERM would (it drains, then
  exits), so it never lives on as an orphan serving the port with old
  certificates.
* **A byte,** :data:`REPLACED`, means a reload has started this worker's
  successor on the same sockets: the worker drains at once and lets go of
  what the two share (see :meth:`GracefulStop.replaced
  <trio_tls_dtls.service.drain.GracefulStop.replaced>`). A SIGTERM could not
  say this: it would mean "the service is stopping", with the drain delay
  and a failing ``/readyz`` on a port the successor also answers.

Why a pipe and not ``prctl(PR_SET_PDEATHSIG)``:

* the parent-death signal is cleared when a process changes its effective
  user or group ID, and a worker does exactly that when it drops root after
  binding (``--user``): the workers that most need it would lose it;
* it fires when the *thread* that forked ends, not the process;
* it arrives as an ordinary signal, which a worker cannot tell from an
  operator's SIGTERM (and a second one means "stop at once");
* it is Linux only; a pipe's end of file is POSIX.

The cost is two file descriptors per worker in the supervisor, one in each
worker, and one task per worker that waits on it (no polling).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

__all__ = ["REPLACED", "Lifelines", "watch_lifeline"]

REPLACED = b"r"
"""What the supervisor writes to a worker it has replaced."""


class Lifelines:
    """The supervisor's ends of its workers' pipes; see the module docstring."""

    def __init__(self) -> None:
        self._write_ends: dict[int, int] = {}  # worker pid -> write end

    def before_fork(self) -> tuple[int, int]:
        """A new pipe for the worker about to be forked: (read end, write end)."""
        return os.pipe()  # non-inheritable across exec (Python's default), kept across fork

    def in_worker(self, pipe: tuple[int, int]) -> int:
        """In the forked worker: drop every write end; the fd to watch."""
        for fd in (pipe[1], *self._write_ends.values()):
            os.close(fd)
        self._write_ends.clear()
        return pipe[0]

    def in_supervisor(self, pid: int, pipe: tuple[int, int]) -> None:
        """In the supervisor, after the fork: keep the write end of *pid*'s pipe."""
        os.close(pipe[0])
        self._write_ends[pid] = pipe[1]

    def tell_replaced(self, pid: int) -> bool:
        """Tell worker *pid* it has been replaced; False if it cannot be told (it is gone)."""
        fd = self._write_ends.get(pid)
        if fd is None:
            return False
        try:
            os.write(fd, REPLACED)
        except OSError:  # EPIPE: it has exited and closed its end
            return False
        return True

    def ended(self, pid: int) -> None:
        """Worker *pid* has exited: close its write end."""
        fd = self._write_ends.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """The supervisor is done: close every write end."""
        for fd in self._write_ends.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._write_ends.clear()


async def watch_lifeline(
    fd: int, *, on_replaced: Callable[[], object], on_gone: Callable[[], object]
) -> None:
    """Watch a worker's lifeline *fd*: *on_replaced* for each :data:`REPLACED`,
    *on_gone* once at end of file (the supervisor has gone), then return."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 64)  # readable: this does not block
        if not data:
            on_gone()
            return
        if REPLACED in data:
            on_replaced()
