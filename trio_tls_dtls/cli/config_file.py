"""The ``serve`` options as a TOML file (``trio-tlsd serve --config FILE``).

Every key is a ``serve`` flag without its dashes, with ``_`` for ``-``:
``--handshake-timeout 5`` is ``handshake_timeout = 5``. Flags on the command
line override the file. Two keys differ from their flags:
``protocols = ["tls", "dtls"]`` (``--tls-only`` / ``--dtls-only``) and
``session_tickets = false`` (``--no-session-tickets``). The one table is
``[[sni]]`` (``--sni``; see :mod:`.sni_option`). Relative paths are
relative to the file's folder. Example::

    host = "0.0.0.0"
    port = 4433
    cert = "/etc/trio-tlsd/server.pem"
    key = "/etc/trio-tlsd/server.key"
    ca = "/etc/trio-tlsd/clients-ca.pem"
    verify_client = "required"
    idle_timeout = 120          # or false for none
    cookie_secret_file = "cookie.key"
    log_format = "json"         # or "text" (the default)
    metrics_port = 9464         # Prometheus: http://127.0.0.1:9464/metrics (and /readyz)
    drain_delay = 5             # on SIGTERM: /readyz fails, accept 5 s more, then drain

An unknown key, a value of the wrong type or an impossible value is a
:class:`~trio_tls_dtls.core.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.networks import parse_networks
from ..core.settings import (
    DEFAULT_DTLS_MTU,
    DEFAULT_PROXY_TRUSTED,
    MAX_DTLS_MTU,
    MIN_DTLS_MTU,
    VerifyClient,
)
from .sni_option import check_sni_tables
from .targets import parse_target

__all__ = ["DEFAULTS", "load_config_file", "render_options"]

DEFAULT_PORT = 4433

DEFAULTS: dict[str, Any] = {
    "host": "localhost",
    "port": DEFAULT_PORT,
    "protocols": ["tls", "dtls"],
    "cert": None,
    "key": None,
    "key_password_file": None,
    "ocsp_staple": None,
    "ca": None,
    "verify_client": "none",
    "crl_file": None,
    "allow_client_subject": [],
    "allow_client_san": [],
    "min_version": "1.2",
    "alpn": [],
    "psk_file": None,
    "keylog_file": None,
    "session_tickets": True,
    "ticket_key_rotation": 86400.0,
    "reload_interval": 10.0,
    "handshake_timeout": 10.0,
    "idle_timeout": 300.0,
    "max_connection_lifetime": None,
    "max_connections": 1024,
    "per_source_rate": 50.0,
    "per_source_burst": 100,
    "per_source_connections": 256,
    "per_source_exempt": ["127.0.0.0/8", "::1/128"],
    "drain_timeout": 10.0,
    "drain_delay": 0.0,
    "mtu": DEFAULT_DTLS_MTU,
    "max_peers": 1024,
    "cookie_secret_file": None,
    "workers": 1,
    "user": None,
    "group": None,
    "forward_tcp": None,
    "forward_udp": None,
    "forward_proxy_protocol": "off",
    "log_format": "text",
    "metrics_port": None,
    "metrics_host": "127.0.0.1",
    "health_port": None,
    "health_host": "127.0.0.1",
    "proxy_protocol": False,
    "proxy_trusted": list(DEFAULT_PROXY_TRUSTED),
    "sni": [],  # [[sni]] tables: see .sni_option
}
"""Every serve option and its default."""


class _Bad(Exception):
    """A value is wrong; the message says what was expected."""


def _int_in(low: int, high: int, what: str) -> Callable[[object, Path], int]:
    def check(value: object, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected {what}, got {value!r}")
        if not low <= value <= high:
            raise _Bad(f"expected {what}, got {value}")
        return value

    return check


def _seconds(value: object, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise _Bad(f"expected a positive number of seconds, got {value}")
    return float(value)


def _non_negative_seconds(value: object, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number of seconds, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise _Bad(f"expected 0 or a positive number of seconds, got {value}")
    return float(value)


def _optional_seconds(value: object, base: Path) -> float | None:
    if value is False:
        return None
    return _seconds(value, base)


def _string(value: object, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a non-empty string, got {value!r}")
    return value


def _path(value: object, base: Path) -> Path:
    return base / _string(value, base)


def _choice(*choices: str) -> Callable[[object, Path], str]:
    def check(value: object, base: Path) -> str:
        if value not in choices:
            raise _Bad(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)

    return check


def _strings(value: object, base: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Bad(f"expected a list of strings, got {value!r}")
    return list(value)


def _protocols(value: object, base: Path) -> list[str]:
    protocols = _strings(value, base)
    if not protocols or not set(protocols) <= {"tls", "dtls"}:
        raise _Bad(f'expected a non-empty list of "tls" and "dtls", got {value!r}')
    return sorted(set(protocols), key=["tls", "dtls"].index)


def _rate(value: object, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number per second, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise _Bad(f"expected 0 (off) or a positive number, got {value!r}")
    return float(value)


def _networks(value: object, base: Path) -> list[str]:
    entries = _strings(value, base)
    try:
        parse_networks(entries)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return entries


def _bool(value: object, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _host_port(value: object, base: Path) -> str:
    text = _string(value, base)
    try:
        parse_target(text)
    except argparse.ArgumentTypeError as exc:
        raise _Bad(str(exc)) from None
    return text


def _sni(value: object, base: Path) -> list[dict[str, Any]]:
    try:
        return check_sni_tables(value, base)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _workers(value: object, base: Path) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise _Bad(f'expected "auto" or a number of processes 1-1024, got {value!r}')
    return value


_CHECKS: dict[str, Callable[[object, Path], Any]] = {
    "host": _string,
    "port": _int_in(0, 65535, "a port 0-65535"),
    "protocols": _protocols,
    "cert": _path,
    "key": _path,
    "key_password_file": _path,
    "ocsp_staple": _path,
    "ca": _path,
    "verify_client": _choice(*(v.value for v in VerifyClient)),
    "crl_file": _path,
    "allow_client_subject": _strings,
    "allow_client_san": _strings,
    "min_version": _choice("1.2", "1.3"),
    "alpn": _strings,
    "psk_file": _path,
    "keylog_file": _path,
    "session_tickets": _bool,
    "ticket_key_rotation": _non_negative_seconds,
    "reload_interval": _non_negative_seconds,
    "handshake_timeout": _seconds,
    "idle_timeout": _optional_seconds,
    "max_connection_lifetime": _optional_seconds,
    "max_connections": _int_in(1, 2**31, "a positive integer"),
    "per_source_rate": _rate,
    "per_source_burst": _int_in(1, 2**31, "a positive integer"),
    "per_source_connections": _int_in(0, 2**31, "0 (off) or a positive integer"),
    "per_source_exempt": _networks,
    "drain_timeout": _seconds,
    "drain_delay": _non_negative_seconds,
    "mtu": _int_in(MIN_DTLS_MTU, MAX_DTLS_MTU, f"an MTU of {MIN_DTLS_MTU}-{MAX_DTLS_MTU} bytes"),
    "max_peers": _int_in(1, 2**31, "a positive integer"),
    "cookie_secret_file": _path,
    "workers": _workers,
    "user": _string,
    "group": _string,
    "forward_tcp": _host_port,
    "forward_udp": _host_port,
    "forward_proxy_protocol": _choice("off", "v1", "v2"),
    "log_format": _choice("text", "json"),
    "metrics_port": _int_in(1, 65535, "a port 1-65535"),
    "metrics_host": _string,
    "health_port": _int_in(1, 65535, "a port 1-65535"),
    "health_host": _string,
    "proxy_protocol": _bool,
    "proxy_trusted": _networks,
    "sni": _sni,
}
assert _CHECKS.keys() == DEFAULTS.keys()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The options set in the TOML file at *path*, checked and normalised."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return check_options(raw, path)


def check_options(raw: Mapping[str, object], path: Path) -> dict[str, Any]:
    """Check *raw* (as read from *path*) against the schema."""
    options: dict[str, Any] = {}
    base = path.parent
    for name, value in raw.items():
        check = _CHECKS.get(name)
        if check is None:
            hint = ""
            if isinstance(value, dict):
                hint = " (the file is flat: no [sections])"
            raise ConfigError(f"{path}: unknown key {name!r}{hint}")
        try:
            options[name] = check(value, base)
        except _Bad as exc:
            raise ConfigError(f"{path}: key {name!r}: {exc}") from None
    return options


def render_options(options: Mapping[str, Any]) -> str:
    """*options* as TOML lines, in schema order (``None`` values commented out)."""
    lines = []
    for name in DEFAULTS:
        value = options.get(name)
        if name == "idle_timeout" and value is None:
            lines.append(f"{name} = false")
        elif value is None:
            lines.append(f"# {name} is not set")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: [[sni]] entries
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
