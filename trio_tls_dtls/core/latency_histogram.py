"""A latency histogram as plain counts: what the servers keep, what Prometheus exports.

The servers observe each successful handshake's duration here; the service's
metrics turn :meth:`LatencyHistogram.cumulative` into Prometheus buckets at
scrape time. Pure data: the caller measures the time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["HANDSHAKE_BUCKETS", "LatencyHistogram"]

# Seconds: loopback handshakes take ~1-5 ms, across the internet 50-500 ms.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Counts per upper bound (cumulative form is made when exported), sum and count."""

    bounds: tuple[float, ...] = HANDSHAKE_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(HANDSHAKE_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
