"""Deadlines that move with activity, cheaply.

An idle timeout is a cancel scope whose deadline is pushed forward whenever
bytes move. Pushing it on every record would add a heap entry to Trio's
deadline table per record, so we push only when the deadline has slipped by
more than a sixteenth of the timeout: the connection is then closed between
15/16 and 16/16 of the timeout after its last activity, for one clock read
per record.
"""

from __future__ import annotations

import trio

__all__ = ["IdleDeadline"]


class IdleDeadline:
    """Keeps *scope*'s deadline at most *timeout* seconds after the last :meth:`touch`."""

    __slots__ = ("_next_push", "_slack", "scope", "timeout")

    def __init__(self, scope: trio.CancelScope, timeout: float) -> None:
        self.scope = scope
        self.timeout = timeout
        self._slack = timeout / 16
        self._next_push = -float("inf")
        self.touch()

    def touch(self) -> None:
        now = trio.current_time()
        if now >= self._next_push:
            self.scope.deadline = now + self.timeout
            self._next_push = now + self._slack

    @property
    def expired(self) -> bool:
        """True if the scope was cancelled by this deadline."""
        return self.scope.cancelled_caught
