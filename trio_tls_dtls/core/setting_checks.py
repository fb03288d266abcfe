"""Checks shared by the settings dataclasses: each normalises one value or raises ConfigError.

Each names the field it checks, so a bad value in a config file or a flag
becomes one line that says which key and what was wrong.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from typing import Literal

from .errors import ConfigError
from .psk import check_identity, check_key

TLSVersion = Literal["1.2", "1.3"]
VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")


def _password(value: str | bytes | None, name: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ConfigError(f"{name} must be a string, not {type(value).__name__}")


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _non_negative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be 0 or a positive number of seconds, not {value!r}")
    return float(value)


def _optional_positive(value: float | None, name: str) -> float | None:
    return None if value is None else _positive(value, name)


def _rate(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number per second, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be 0 (no limit) or a positive number, not {value!r}")
    return float(value)


def _count(value: int, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _versions(minimum: str, maximum: str, owner: str) -> None:
    for name, value in (("min_version", minimum), ("max_version", maximum)):
        if value not in VERSIONS:
            raise ConfigError(f"{owner}.{name} must be one of {', '.join(VERSIONS)}, not {value!r}")
    if VERSIONS.index(minimum) > VERSIONS.index(maximum):
        raise ConfigError(f"{owner}.min_version {minimum} is above max_version {maximum}")


def _alpn(protocols: tuple[str, ...], owner: str) -> tuple[str, ...]:
    protocols = tuple(protocols)
    for proto in protocols:
        if not isinstance(proto, str) or not 0 < len(proto.encode()) < 256:
            raise ConfigError(f"{owner}.alpn entries must be 1-255 byte strings, not {proto!r}")
    return protocols


# 1200 bytes fits any IPv6 path (1280) with room for the UDP and IP headers.


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields in __post_init__.
    object.__setattr__(obj, name, value)


def _psk_keys(keys: object) -> Mapping[str, bytes]:
    if not isinstance(keys, Mapping):
        raise ConfigError(f"psk_keys must map identities to keys, not {type(keys).__name__}")
    checked = {
        check_identity(identity, "psk_keys"): check_key(key, f"psk_keys[{identity!r}]")
        for identity, key in keys.items()
    }
    # Read-only, and a copy: the caller's dict may change, these settings may not.
    return types.MappingProxyType(checked)


def _ciphers(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be an OpenSSL cipher list, not {value!r}")
    return value
