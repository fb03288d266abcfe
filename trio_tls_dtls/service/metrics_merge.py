"""Many workers' metrics as one: parse each worker's text exposition, add them up.

The supervisor of ``--workers`` scrapes every worker slot's private
endpoint (classic text format) and serves one exposition for the service.
Series are matched by name and labels across workers, then:

* counters, histograms (every bucket, ``_sum`` and ``_count``) and gauges
  are **summed**: connections open now, peers in the tables, queue depths
  and thread counts all add up across processes;
* the series in :data:`SAME_IN_EVERY_WORKER` (facts every worker loads from
  the same files) take the **largest** value instead, and the workers'
  ``build_info`` is dropped (the supervisor states its own: same code).

:class:`Retired` keeps counters monotonic when a worker is replaced (a
crash and restart, or a reload's new generation): when a slot answers from
a new process ID, the last values scraped from the one before are carried
into that slot's baseline and added from then on. What a replaced worker
counted after its last scrape (a few seconds at most, with a scrape every
15 s or so) is lost; gauges are never carried (a gone worker holds nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SAME_IN_EVERY_WORKER", "Retired", "merge", "parse"]

SAME_IN_EVERY_WORKER = frozenset({"trio_tlsd_certificate_not_after_timestamp_seconds"})
_DROPPED = frozenset({"trio_tlsd_build_info"})
_MONOTONIC = frozenset({"counter", "histogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class Family:
    """One metric family from one or more workers: its header and its samples by key."""

    name: str
    documentation: str
    type: str
    unit: str = ""
    samples: dict[SampleKey, float] = field(default_factory=dict)


Exposition = dict[str, Family]


def parse(text: str) -> Exposition:
    """A worker's text exposition as families (a ValueError if it is not one)."""
    families: Exposition = {}
    for metric in text_string_to_metric_families(text):
        family = Family(metric.name, metric.documentation, metric.type, metric.unit)
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            family.samples[key] = sample.value
        families[metric.name] = family
    return families


def merge(expositions: Iterable[Exposition]) -> list[Metric]:
    """The families of all *expositions* added up (see the module docstring)."""
    merged: Exposition = {}
    for exposition in expositions:
        for name, family in exposition.items():
            if name in _DROPPED:
                continue
            into = merged.setdefault(
                name, Family(name, family.documentation, family.type, family.unit)
            )
            largest = name in SAME_IN_EVERY_WORKER
            for key, value in family.samples.items():
                old = into.samples.get(key)
                if old is None:
                    into.samples[key] = value
                else:
                    into.samples[key] = max(old, value) if largest else old + value
    return [_as_metric(family) for family in merged.values()]


def _as_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.type, family.unit)
    for (sample_name, labels), value in family.samples.items():
        metric.add_sample(sample_name, dict(labels), value)
    return metric


class Retired:
    """Per slot, the counters of the processes that served it before (see the module docstring).

    During a reload a slot's old and new workers both accept for a moment,
    so answers may come from the old process again after the new one's: an
    answer from a process already retired is not counted again; the last
    answer of the slot's current process stands in for it.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, Exposition]] = {}  # slot -> (pid, last scrape)
        self._baseline: dict[int, Exposition] = {}  # slot -> what its past processes counted
        self._retired: dict[int, set[int]] = {}  # slot -> pids carried into the baseline

    def carry(self, slot: int, pid: int, scraped: Exposition) -> Exposition:
        """*scraped* from *slot*'s process *pid*, with the slot's past processes' counters added."""
        retired = self._retired.setdefault(slot, set())
        last = self._last.get(slot)
        if pid in retired and last is not None:
            scraped = last[1]
        elif last is not None and last[0] != pid:
            base = self._baseline.get(slot, {})
            self._baseline[slot] = _as_exposition(merge([base, _monotonic(last[1])]))
            retired.add(last[0])
            self._last[slot] = (pid, scraped)
        else:
            self._last[slot] = (pid, scraped)
        past = self._baseline.get(slot)
        if past is None:
            return scraped
        return _as_exposition(merge([scraped, past]))


def _monotonic(exposition: Exposition) -> Exposition:
    return {name: f for name, f in exposition.items() if f.type in _MONOTONIC}


def _as_exposition(metrics: list[Metric]) -> Exposition:
    families: Exposition = {}
    for metric in metrics:
        family = Family(metric.name, metric.documentation, metric.type, metric.unit)
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        families[metric.name] = family
    return families
