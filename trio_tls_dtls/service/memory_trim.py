"""Giving the memory of a finished burst back to the operating system.

Why
---
A burst of connections leaves the server process far larger than before it,
long after every connection has closed: 2,000 TLS connections held at once
and then closed took the resident size from 43 to 125 MiB, and 500 DTLS
peers from 55 to 86 MiB (docs/soak.rst has the measurement). Almost all of
it is memory the process has *freed*: glibc keeps freed heap memory for
later instead of returning it, because what is still in use (a few objects
that outlived the burst) is scattered over the heap and keeps its top from
shrinking. It does not grow further with the next burst, but an operator
watching the resident size reads it as a leak, and a container's memory
limit counts it.

``malloc_trim(0)`` walks glibc's heaps and returns every whole free page
(``madvise(MADV_DONTNEED)``): after it the same process measured 55 and
52 MiB. What stays is not glibc's to return: CPython's small-object arenas
(1 MiB each, kept while any object in them lives) and what OpenSSL and we
still hold.

When
----
The walk is not free. It holds glibc's heap lock and blocks this thread
(the event loop) while it runs. Measured here (2 cores, shared): 3-6 ms on a
quiet heap, 11-14 ms after 1,000 connections (34 MiB free), 15-32 ms after
2,000 (70 MiB free), 20-44 ms after 4,000 (145 MiB free). So it runs only
when a burst has ended (:class:`TrimTrigger`, a pure function of the open count and the
time): the number of open connections plus DTLS peers has fallen to at most
half of its peak since the last trim, by at least ``min_drop``, and has
stayed there for ``quiet_for`` seconds (so that the closing is done), and
never more often than every ``min_interval`` seconds.

Only glibc has ``malloc_trim``; elsewhere (musl, macOS) this does nothing.
``M_ARENA_MAX`` (fewer per-thread arenas for the offload threads) was
measured too and changed nothing here: 1, 2, 4 and glibc's default gave the
same sizes within 2 MiB, so it is not set.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .service import Service

__all__ = ["TrimTrigger", "malloc_trim_function", "trim_memory_after_bursts"]

logger = logging.getLogger(__name__)


@dataclass
class TrimTrigger:
    """Decides, from the open count and the time, when a burst is over; see the module docstring."""

    min_drop: int = 100
    """The open count must have fallen by at least this many from its peak."""
    quiet_for: float = 5.0
    """...and stayed at most half its peak for this many seconds."""
    min_interval: float = 10.0
    """Seconds between two trims, at least."""
    peak: int = 0
    """The highest open count since the last trim."""
    _fallen_since: float | None = None
    _last_trim: float = -math.inf

    def observe(self, open_now: int, now: float) -> bool:
        """Record *open_now* at time *now*; True when the heap should be trimmed now."""
        self.peak = max(self.peak, open_now)
        fallen = self.peak - open_now >= self.min_drop and 2 * open_now <= self.peak
        if not fallen:
            self._fallen_since = None
            return False
        if self._fallen_since is None:
            self._fallen_since = now
        if now - self._fallen_since < self.quiet_for or now - self._last_trim < self.min_interval:
            return False
        self._last_trim, self._fallen_since, self.peak = now, None, open_now
        return True


def malloc_trim_function() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        # The symbols already loaded into this process: no search for a
        # library file (ctypes.util.find_library would run ldconfig).
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


async def trim_memory_after_bursts(
    service: Service,
    *,
    trigger: TrimTrigger | None = None,
    interval: float = 1.0,
    trim: Callable[[int], int] | None = None,
) -> None:
    """Every *interval* seconds, ask *trigger* whether a burst has ended; if so, trim.

    Runs until cancelled (start it beside the service). Returns at once
    where there is no ``malloc_trim``. *trim* replaces it (for tests).
    """
    trim = trim if trim is not None else malloc_trim_function()
    if trim is None:
        return
    trigger = trigger if trigger is not None else TrimTrigger()
    while True:
        await trio.sleep(interval)
        peak, open_now = trigger.peak, service.open_count()
        if not trigger.observe(open_now, trio.current_time()):
            continue
        before = _resident_mib()
        started = time.perf_counter()
        trim(0)
        took = (time.perf_counter() - started) * 1000
        logger.info(
            "open connections and peers fell from %d to %d: returned freed memory to the"
            " system (resident %.1f -> %.1f MiB; malloc_trim took %.0f ms)",
            peak,
            open_now,
            before,
            _resident_mib(),
            took,
        )


def _resident_mib() -> float:
    """This process's resident size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
