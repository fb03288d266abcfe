"""Merging workers' raw results into per-size figures; text, JSON and a plot.

Rates are operations over the wall time of the phase across all worker
processes (first start to last end), so adding processes cannot inflate
them. MB/s counts payload bytes echoed back once (each byte crosses the
connection twice); it is 0 for handshakes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from .config import BenchConfig
from .load import PhaseResult

__all__ = ["BenchReport", "SizeReport", "machine_description", "merge", "percentile"]


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of already sorted values (0 if there are none)."""
    if not sorted_values:
        return 0
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))  # ceil
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class SizeReport:
    size: int
    ops: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    ops_per_s: float
    mb_per_s: float
    resumed: int
    latency_us: dict[str, float]
    latencies_ns: array[int] = field(repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ns"]
        return data


def merge(size: int, parts: Iterable[PhaseResult]) -> SizeReport:
    parts = list(parts)
    latencies: array[int] = array("Q")
    errors: Counter[str] = Counter()
    for part in parts:
        latencies.extend(part.latencies_ns)
        errors.update(part.errors)
    ops = sum(p.ops for p in parts)
    nbytes = sum(p.bytes for p in parts)
    seconds = max(p.end for p in parts) - min(p.start for p in parts) if parts else 0.0
    ordered = sorted(latencies)
    us = {
        name: round(percentile(ordered, q) / 1000, 1)
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
    }
    us["max"] = round(ordered[-1] / 1000, 1) if ordered else 0.0
    us["mean"] = round(sum(ordered) / len(ordered) / 1000, 1) if ordered else 0.0
    return SizeReport(
        size=size,
        ops=ops,
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        seconds=round(seconds, 4),
        ops_per_s=round(ops / seconds, 1) if seconds > 0 else 0.0,
        mb_per_s=round(nbytes / seconds / 1e6, 3) if seconds > 0 else 0.0,
        resumed=sum(p.resumed for p in parts),
        latency_us=us,
        latencies_ns=latencies,
    )


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on."""
    import OpenSSL
    import trio
    from OpenSSL import SSL

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "trio": trio.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
    }


@dataclass
class BenchReport:
    config: BenchConfig
    sizes: list[SizeReport]

    @property
    def ops(self) -> int:
        return sum(s.ops for s in self.sizes)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.sizes)

    def rate_name(self) -> str:
        return "handshakes/s" if self.config.mode == "handshake" else "round trips/s"

    def table(self) -> str:
        """The human-readable report, one row per size."""
        head = (
            f"{'size':>7} {'ops':>8} {self.rate_name():>14} {'MB/s':>9} "
            f"{'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>10} {'errors':>7}"
        )
        lines = [self.config.describe(), head]
        for s in self.sizes:
            u = s.latency_us
            size = "-" if self.config.mode == "handshake" else str(s.size)
            lines.append(
                f"{size:>7} {s.ops:>8} {s.ops_per_s:>14,.1f} {s.mb_per_s:>9.2f} "
                f"{u['p50']:>9,.1f} {u['p90']:>9,.1f} {u['p99']:>9,.1f} {u['max']:>10,.1f} "
                f"{s.errors:>7}"
            )
            if self.config.resume:
                lines.append(f"{'':>7} resumed: {s.resumed} of {s.ops}")
            for kind, n in sorted(s.error_kinds.items(), key=lambda kv: -kv[1]):
                lines.append(f"{'':>7} error: {n} x {kind}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        for key, value in cfg.items():
            if isinstance(value, Path):
                cfg[key] = str(value)
        return {
            "config": cfg,
            "machine": machine_description(),
            "rate_unit": self.rate_name(),
            "results": [s.as_json() for s in self.sizes],
        }

    def write_json(self, path: Path) -> None:
        try:
            path.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None

    def plot(self, path: Path) -> None:
        """A latency histogram per size (log scale), as a PNG."""
        plt = require_matplotlib()
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for s in self.sizes:
            if not len(s.latencies_ns):
                continue
            values = [v / 1000 for v in s.latencies_ns]
            label = "handshake" if self.config.mode == "handshake" else f"{s.size} B"
            low, high = max(min(values), 1.0), max(max(values), 2.0)
            bins = [low * (high / low) ** (i / 60) for i in range(61)]
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (µs, log scale)")
        ax.set_ylabel("operations")
        ax.set_title(self.config.describe(), fontsize=9)
        ax.legend()
        fig.tight_layout()
        try:
            fig.savefig(path)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            plt.close(fig)


def require_matplotlib() -> Any:
    """matplotlib.pyplot (headless), or a one-line ConfigError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'trio-tls-dtls[plot]' (or: pip install "
            "matplotlib)"
        ) from None
    return plt
