"""The trim after a burst: when it fires (a pure trigger), and the task that runs it.

The process-level check, that a real burst's memory is given back, is the
burst check of the soak run (``benchmarks/soak_burst.py``, run by ``nox -s
soak``): resident sizes are too noisy for a unit test.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from trio_tls_dtls.service import memory_trim
from trio_tls_dtls.service.memory_trim import (
    TrimTrigger,
    malloc_trim_function,
    trim_memory_after_bursts,
)


def observe_all(trigger: TrimTrigger, points: list[tuple[float, int]]) -> list[float]:
    """Feed (time, open count) points; the times at which the trigger said trim."""
    return [t for t, n in points if trigger.observe(n, t)]


def test_a_fall_to_half_the_peak_trims_once_it_has_lasted() -> None:
    trigger = TrimTrigger(min_drop=100, quiet_for=5.0, min_interval=10.0)
    points = [(0.0, 10), (1.0, 300), (2.0, 250), (3.0, 100), (4.0, 40), (7.0, 0), (8.0, 0)]
    assert observe_all(trigger, points) == [8.0]  # fallen since 3.0, quiet for 5 s
    assert trigger.peak == 0  # the next burst is measured from here


def test_no_trim_without_a_burst_worth_trimming() -> None:
    trigger = TrimTrigger(min_drop=100, quiet_for=5.0, min_interval=10.0)
    # A small load comes and goes: the fall is less than min_drop.
    assert observe_all(trigger, [(float(t), 80 if t < 5 else 0) for t in range(30)]) == []
    # A big load that falls by less than half: still busy, nothing to give back.
    trigger = TrimTrigger(min_drop=100, quiet_for=5.0, min_interval=10.0)
    assert observe_all(trigger, [(float(t), 1000 if t < 5 else 600) for t in range(30)]) == []


def test_a_rebound_restarts_the_quiet_time() -> None:
    trigger = TrimTrigger(min_drop=100, quiet_for=5.0, min_interval=10.0)
    points = [(0.0, 300), (1.0, 100), (4.0, 250), (5.0, 100), (9.0, 100), (10.0, 100)]
    assert observe_all(trigger, points) == [10.0]  # 5 s after the fall at 5.0, not 1.0


def test_trims_are_at_least_min_interval_apart() -> None:
    trigger = TrimTrigger(min_drop=100, quiet_for=1.0, min_interval=10.0)
    points = [(0.0, 400), (1.0, 150), (2.0, 150)]  # trim at 2.0; peak is now 150
    points += [(3.0, 400), (4.0, 0), (5.0, 0), (11.0, 0), (12.0, 0)]
    assert observe_all(trigger, points) == [2.0, 12.0]


@dataclass
class FakeService:
    """open_count() follows a schedule of (from this virtual time on, this many open)."""

    schedule: list[tuple[float, int]]
    start: float = field(default=0.0)

    def open_count(self) -> int:
        now = trio.current_time() - self.start
        return [n for t, n in self.schedule if t <= now][-1]


def test_the_task_trims_after_a_burst_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger=memory_trim.__name__)
    calls: list[tuple[float, int]] = []
    service = FakeService([(0.0, 0), (2.0, 500), (10.0, 20)])

    def fake_trim(pad: int) -> int:
        calls.append((trio.current_time() - service.start, pad))
        return 1

    async def main() -> None:
        service.start = trio.current_time()
        with trio.move_on_after(60):
            await trim_memory_after_bursts(service, trim=fake_trim)  # type: ignore[arg-type]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # Sampled each second: fallen at 10 s, quiet for 5 s, trimmed at 15 s; once.
    assert calls == [(15.0, 0)]
    assert "fell from 500 to 20: returned freed memory" in caplog.text


def test_nothing_runs_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_trim, "malloc_trim_function", lambda: None)

    async def main() -> None:
        with trio.fail_after(1):  # returns at once rather than sampling forever
            await trim_memory_after_bursts(FakeService([(0.0, 0)]))  # type: ignore[arg-type]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_malloc_trim_is_found_on_glibc_only() -> None:
    trim = malloc_trim_function()
    if platform.libc_ver()[0] != "glibc":  # musl, macOS: nothing to call
        assert trim is None
        return
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: some memory was returned
