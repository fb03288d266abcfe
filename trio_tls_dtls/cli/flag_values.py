"""Parsers for flag values (argparse ``type=``): each error names the value and what was expected.

They raise :class:`argparse.ArgumentTypeError`, which argparse turns into
one line, ``trio-tlsd serve: error: argument --port: port must be 0-65535,
not 70000``, and exit status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..core.networks import parse_networks
from ..core.settings import MAX_DTLS_MTU, MIN_DTLS_MTU
from .targets import parse_target

__all__ = [
    "count_or_off",
    "health_port",
    "int_at_least",
    "metrics_port",
    "mtu",
    "network_list",
    "non_negative_seconds",
    "optional_seconds",
    "port",
    "positive_int",
    "rate",
    "seconds",
    "target_text",
    "workers",
]


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer 0-65535, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def metrics_port(text: str) -> int:
    value = port(text)
    if value == 0:  # scrapers and probes must know where to ask
        raise argparse.ArgumentTypeError("metrics port must be 1-65535, not 0")
    return value


def health_port(text: str) -> int:
    value = port(text)
    if value == 0:  # a probe must know where to ask; worker k serves on P + k
        raise argparse.ArgumentTypeError("health port must be 1-65535, not 0")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text}")
    return value


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number of seconds, not {text}")
    return value


def optional_seconds(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "0"} else seconds(text)


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number per second, not {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected 0 (off) or a positive number, not {text}")
    return value


def network_list(text: str) -> list[str]:
    """Comma-separated addresses or CIDR networks; ``none`` is the empty list."""
    if text.strip().lower() == "none":
        return []
    entries = [part.strip() for part in text.split(",") if part.strip()]
    try:
        parse_networks(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """A parser for integers from *minimum* up; *what* says what is expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, not {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
count_or_off = int_at_least(0, "0 (off) or a positive integer")


def target_text(text: str) -> str:
    parse_target(text)  # raises argparse.ArgumentTypeError with the reason
    return text


def workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number or "auto", not {text!r}') from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"expected 1-1024 worker processes, not {value}")
    return value


def mtu(text: str) -> int:
    value = positive_int(text)
    if not MIN_DTLS_MTU <= value <= MAX_DTLS_MTU:
        raise argparse.ArgumentTypeError(
            f"MTU must be {MIN_DTLS_MTU}-{MAX_DTLS_MTU} bytes, not {value}"
        )
    return value
