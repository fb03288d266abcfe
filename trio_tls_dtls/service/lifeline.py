"""The lifeline: how a worker learns that its supervisor is gone.

The supervisor makes a pipe before it forks its first worker and keeps the
write end to itself; every worker closes its inherited copy of the write end
at once and watches the read end. Nothing is ever written. The read end
becomes readable (end of file) exactly when the last copy of the write end
closes, which is when the supervisor process ends, however it ends: SIGKILL,
an out-of-memory kill, an exception, a plain ``sys.exit``. The worker then
asks to stop as a first SIGTERM would (it drains, then exits), so it never
lives on as an orphan serving the port with old certificates.

Why a pipe and not ``prctl(PR_SET_PDEATHSIG)``:

* the parent-death signal is cleared when a process changes its effective
  user or group ID, and a worker does exactly that when it drops root after
  binding (``--user``): the workers that most need it would lose it;
* it fires when the *thread* that forked ends, not the process;
* it arrives as an ordinary signal, which a worker cannot tell from an
  operator's SIGTERM (and a second one means "stop at once");
* it is Linux only; a pipe's end of file is POSIX.

The cost is one file descriptor per process and one task per worker that
waits on it (no polling).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

__all__ = ["Lifeline", "watch_lifeline"]


class Lifeline:
    """The pipe between a supervisor and its workers; see the module docstring."""

    def __init__(self) -> None:
        # Non-inheritable across exec (Python's default), inherited across fork.
        self.read_fd, self._write_fd = os.pipe()

    def in_worker(self) -> int:
        """Call first thing in a forked worker: drops the write end; the fd to watch."""
        os.close(self._write_fd)
        return self.read_fd

    def close(self) -> None:
        """The supervisor is done with its workers: close both ends."""
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


async def watch_lifeline(fd: int, on_gone: Callable[[], object]) -> None:
    """Wait until the supervisor behind *fd* has gone, then call *on_gone* once."""
    # Readable means end of file: nobody ever writes to the lifeline.
    await trio.lowlevel.wait_readable(fd)
    on_gone()
