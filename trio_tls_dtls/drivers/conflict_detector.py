"""Small concurrency helpers shared by the TLS and DTLS drivers."""

from __future__ import annotations

from types import TracebackType

import trio

__all__ = ["ConflictDetector", "Turn"]


class ConflictDetector:
    """Raises BusyResourceError when two tasks use one direction of a stream at once.

    ``trio.abc`` streams and channels allow one sender and one receiver at a
    time; a second concurrent caller is a bug in the caller, reported loudly.
    """

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


class Turn:
    """One task at a time, in the order they came: a lock without ``trio.Lock``'s bookkeeping.

    ``trio.Lock`` records its owner, checks it on release, registers the
    owner so that waiters learn if it exits holding the lock, and is
    protected from KeyboardInterrupt: several µs per acquire and release,
    which a TLS stream paid on every record it sent. A turn is taken and
    given back in a ``try``/``finally`` by the same task, so it needs none of
    that: when free, taking it sets a flag (no schedule point; the callers
    have their own); when held, the taker parks in a FIFO queue and
    :meth:`give_back` hands the turn straight to the first in it, so no
    one can slip in between. A task cancelled while it waits leaves the
    queue and never gets the turn. The queue exists only while someone
    waits (per-connection memory).
    """

    __slots__ = ("_held", "_queue")

    def __init__(self) -> None:
        self._held = False
        self._queue: trio.lowlevel.ParkingLot | None = None

    def locked(self) -> bool:
        """True while some task has the turn."""
        return self._held

    def take_now(self) -> bool:
        """Take the turn if it is free (True); False if someone has it."""
        if self._held:
            return False
        self._held = True
        return True

    async def take(self) -> None:
        """Wait for the turn (at once if nobody has it)."""
        if not self._held:
            self._held = True
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = trio.lowlevel.ParkingLot()
        await queue.park()  # woken by give_back, with the turn already ours

    def give_back(self) -> None:
        """End our turn: the first waiter has it now, or nobody."""
        queue = self._queue
        if queue:
            queue.unpark()
        else:
            self._held = False
            self._queue = None
