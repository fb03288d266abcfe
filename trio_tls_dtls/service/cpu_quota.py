"""How many CPUs this process may really use: the affinity mask and the cgroup v2 quota.

``os.cpu_count()`` counts the host's CPUs. A process in a container sees all
of them and may use few: a pod limited to 2 CPUs on a 64-CPU node that
started one worker per CPU would run 64 workers, each throttled most of the
time. Two limits apply, and ``--workers auto`` takes the smaller:

* the **affinity mask** (``taskset``, a cpuset cgroup, Kubernetes' static
  CPU manager): the CPUs the scheduler may run us on,
  ``os.sched_getaffinity(0)``;
* the **CFS bandwidth quota** of cgroup v2: ``cpu.max`` holds ``QUOTA
  PERIOD`` (microseconds; ``max`` for no quota), so the cgroup may use
  QUOTA/PERIOD CPUs' worth of time. Kubernetes writes it from
  ``resources.limits.cpu``. A limit set on an ancestor cgroup applies too, so
  every ``cpu.max`` from our cgroup up to the root counts, and the smallest
  wins. Our cgroup is the ``0::PATH`` line of ``/proc/self/cgroup``, under
  ``/sys/fs/cgroup`` (inside a container with its own cgroup namespace the
  path is ``/`` and the mount is the container's own cgroup).

The quota is rounded **up** (1.5 CPUs: 2 workers): one worker per whole CPU
would leave the half unused, while two are throttled only at full load, for
a fraction of each period. At least one worker, always. cgroup v1 is not
read (its quota lives elsewhere, ``cpu.cfs_quota_us``); the decision then
says that no cgroup v2 quota was found.

The parsing and the decision are pure functions of the files' text, so they
are tested without a container; :func:`usable_cpus` is the part that reads.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.errors import ConfigError

__all__ = [
    "CpuMax",
    "WorkerDecision",
    "cgroup_v2_path",
    "decide_workers",
    "parse_cpu_max",
    "read_cpu_limits",
    "usable_cpus",
    "worker_count",
]

logger = logging.getLogger(__name__)

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuMax:
    """One ``cpu.max`` file: *quota* microseconds per *period* (None: no quota)."""

    quota: int | None
    period: int
    where: str = "cpu.max"
    """The file it was read from, for the log."""

    @property
    def cpus(self) -> int | None:
        """The quota in whole CPUs, rounded up (at least 1); None without a quota."""
        if self.quota is None:
            return None
        return max(1, math.ceil(self.quota / self.period))

    def describe(self) -> str:
        quota = "max" if self.quota is None else str(self.quota)
        return f"cgroup cpu.max {quota}/{self.period} in {self.where}"


@dataclass(frozen=True)
class WorkerDecision:
    """What ``--workers auto`` chose, and the one-line reason the log gives."""

    count: int
    reason: str


def parse_cpu_max(text: str, where: str = "cpu.max") -> CpuMax:
    """Parse a cgroup v2 ``cpu.max``: ``"max 100000"`` or ``"200000 100000"``.

    A missing period means the kernel default, 100000 µs. A ValueError names
    *where* for anything else (a zero period, negative numbers, extra words).
    """
    parts = text.split()
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"{where}: expected 'QUOTA PERIOD', not {text.strip()!r}")
    try:
        period = int(parts[1]) if len(parts) == 2 else 100_000
        quota = None if parts[0] == "max" else int(parts[0])
    except ValueError:
        raise ValueError(f"{where}: expected 'QUOTA PERIOD', not {text.strip()!r}") from None
    if period <= 0 or (quota is not None and quota <= 0):
        raise ValueError(f"{where}: quota and period must be positive, not {text.strip()!r}")
    return CpuMax(quota, period, where)


def cgroup_v2_path(proc_self_cgroup: str) -> str | None:
    """Our cgroup v2 path from the text of ``/proc/self/cgroup`` (the ``0::`` line).

    None when there is no v2 line (a pure cgroup v1 host), or when the path
    leads outside our cgroup namespace (``/..``), where we cannot read it.
    """
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return None if ".." in PurePosixPath(path).parts else path
    return None


def candidate_files(path: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Every ``cpu.max`` that may limit cgroup *path*: its own, then each ancestor's."""
    parts = PurePosixPath(path).parts[1:]  # without the leading "/"
    return [root.joinpath(*parts[:depth], "cpu.max") for depth in range(len(parts), -1, -1)]


def decide_workers(affinity: int, limits: Sequence[CpuMax]) -> WorkerDecision:
    """``--workers auto`` from the CPUs in the affinity mask and every ``cpu.max`` found."""
    cpus_in_affinity = f"{affinity} CPU{'s' if affinity != 1 else ''} in affinity"
    quotas = [(limit.cpus, limit) for limit in limits if limit.cpus is not None]
    if not quotas:
        return WorkerDecision(max(1, affinity), f"{cpus_in_affinity}; no cgroup cpu.max quota")
    quota_cpus, tightest = min(quotas, key=lambda pair: pair[0])  # the first of equals
    if quota_cpus < affinity:
        return WorkerDecision(quota_cpus, f"{tightest.describe()}; {cpus_in_affinity}")
    return WorkerDecision(max(1, affinity), f"{cpus_in_affinity}; {tightest.describe()}")


def read_cpu_limits(
    proc_self_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT
) -> list[CpuMax]:
    """Every readable, well-formed ``cpu.max`` from our cgroup up to the root.

    A file that is missing or unreadable (the root cgroup has none; a
    sandbox may hide them) or malformed is skipped: the quota is a hint for
    a default, and no hint must stop the server from starting.
    """
    try:
        path = cgroup_v2_path(proc_self_cgroup.read_text())
    except OSError:
        return []
    if path is None:
        return []
    limits = []
    for file in candidate_files(path, root):
        try:
            limits.append(parse_cpu_max(file.read_text(), str(file)))
        except (OSError, ValueError):
            continue
    return limits


def affinity_cpus() -> int:
    """The CPUs this process may run on (all of the host's where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def usable_cpus(
    proc_self_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT
) -> WorkerDecision:
    """The ``--workers auto`` decision for this process, read from the system."""
    return decide_workers(affinity_cpus(), read_cpu_limits(proc_self_cgroup, root))


def worker_count(value: int | str) -> int:
    """``auto`` (the usable CPUs, see :mod:`.cpu_quota`) or a positive integer.

    A ConfigError otherwise. ``auto`` logs what it decided and why.
    """
    if value == "auto":
        decision = usable_cpus()
        logger.info("workers auto: %d (%s)", decision.count, decision.reason)
        return decision.count
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'workers must be a positive integer or "auto", not {value!r}')
    return value
