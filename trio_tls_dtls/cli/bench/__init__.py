"""The load generator behind ``trio-tlsd bench``, usable as a library.

``run_bench(BenchConfig(proto="tls", mode="echo", host="127.0.0.1",
port=4433, ...))`` runs the load and returns a :class:`BenchReport`;
``benchmarks/suite.py`` drives it against several servers in one run.
"""

from __future__ import annotations

from .command import add_parser, run_bench
from .config import BenchConfig
from .report import BenchReport, SizeReport

__all__ = ["BenchConfig", "BenchReport", "SizeReport", "add_parser", "run_bench"]
