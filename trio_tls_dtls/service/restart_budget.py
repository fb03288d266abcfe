"""How often a worker slot may be restarted after a crash, and after what delay.

The supervisor (:mod:`.workers`) asks :meth:`RestartBudget.next_delay` each
time a worker dies unexpectedly. The answer is a backoff that doubles with
each restart of that slot in the last ``window`` seconds, or None once the
slot has been restarted ``max_restarts`` times in the window: then the
supervisor gives up rather than spin in a crash loop.

The budget is per slot: one worker in a crash loop (a handler bug that one
client triggers, say) spends its own budget, not its neighbours'. A reload's
new workers take the slots of the old ones, and their budgets with them. No
clock is read here: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RestartBudget", "restart_delay"]


@dataclass
class RestartBudget:
    """How often each worker slot may be restarted; see the module docstring."""

    max_restarts: int = 10
    window: float = 60.0
    backoff: float = 0.1
    """Delay before a slot's first restart in a window; doubled for each later one."""
    max_backoff: float = 5.0
    _times: dict[int, deque[float]] = field(default_factory=dict)

    def next_delay(self, slot: int, *, now: float) -> float | None:
        """Record a restart of *slot* at *now*; the delay before it, or None past the cap."""
        times = self._times.setdefault(slot, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) >= self.max_restarts:
            return None
        delay = restart_delay(len(times), self.backoff, self.max_backoff)
        times.append(now)
        return delay


def restart_delay(recent: int, base: float, cap: float) -> float:
    """The backoff before a restart when *recent* restarts happened in the window.

    0 recent restarts: *base*; each one more doubles it, up to *cap*.
    """
    return float(min(cap, base * 2 ** min(recent, 30)))
