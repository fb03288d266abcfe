"""Deadlines that move with activity, cheaply, under a fixed cap.

An idle timeout is a cancel scope whose deadline is pushed forward whenever
application data moves (the stream or channel calls :meth:`IdleDeadline.touch`
when a receive returns or a send completes: plaintext progress, never raw
bytes, so a peer trickling ciphertext cannot keep a connection). Pushing it
on every record would add a heap entry to Trio's deadline table per record,
so we push only when the deadline has slipped by more than a sixteenth of
the timeout: the connection is then closed between 15/16 and 16/16 of the
timeout after its last activity, for one clock read per record.

The same scope carries the maximum lifetime: *cap* is the time it must end
by whatever the activity, and no push goes past it. One scope per
connection, not two (each is per-connection memory).
"""

from __future__ import annotations

import math

import trio

__all__ = ["IdleDeadline"]


class IdleDeadline:
    """Keeps *scope*'s deadline *timeout* seconds after the last :meth:`touch`, never past *cap*."""

    __slots__ = ("_cap", "_next_push", "_slack", "scope", "timeout")

    def __init__(self, scope: trio.CancelScope, timeout: float, cap: float = math.inf) -> None:
        self.scope = scope
        self.timeout = timeout
        self._cap = cap
        self._slack = timeout / 16
        self._next_push = -math.inf
        self.touch()

    def touch(self) -> None:
        now = trio.current_time()
        if now >= self._next_push:
            self.scope.deadline = min(now + self.timeout, self._cap)
            self._next_push = now + self._slack
