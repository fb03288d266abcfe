"""Certificates by server name (SNI): ``serve --sni NAME=CERT,KEY`` and ``[[sni]]`` tables.

Both forms become the same option value, a list of entries
``{"names": [...], "cert": Path, "key": Path}``, which
:func:`sni_certificates` turns into
:attr:`~trio_tls_dtls.core.settings.ServerSettings.sni_certificates`. The
library does the rest: a client whose ServerName matches one of an entry's
names (``*.example.com`` matches one label) gets that certificate; any
other client, or one that sends no name, gets ``--cert``. The files are read
whenever the contexts are built, so a SIGHUP reload re-reads them too.

In the config file::

    [[sni]]
    names = ["api.example.com", "*.api.example.com"]
    cert = "api.pem"
    key = "api.key"

Repeating ``--sni`` with the same CERT,KEY adds names to one entry. A name
given twice, or a malformed one, is an error naming it: which certificate a
client gets must not depend on the order of the flags.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.settings import CertificateSettings

__all__ = [
    "check_sni_tables",
    "merge_sni",
    "merge_sni_flags",
    "parse_sni_flag",
    "sni_certificates",
]

# DNS labels as SNI carries them (RFC 6066: a host name, never an IP literal).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TABLE_KEYS = ("names", "cert", "key")


def server_name(text: str) -> str:
    """*text* as a lower-case SNI pattern (``host.example`` or ``*.example``); ValueError if not."""
    name = text.strip().lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not name or len(name) > 253 or not labels or not all(map(_LABEL.match, labels)):
        raise ValueError(f"{text!r} is not a server name (expected e.g. api.example.com)")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{text!r} is an IP address: clients send no SNI for those")
    return name


def parse_sni_flag(text: str) -> dict[str, Any]:
    """argparse type of ``--sni``: ``NAME=CERT,KEY`` (paths relative to the working folder)."""
    name, equals, files = text.partition("=")
    cert, comma, key = files.partition(",")
    if not (equals and comma and name and cert and key) or "," in key:
        raise argparse.ArgumentTypeError(
            f"expected NAME=CERT,KEY (e.g. api.example.com=api.pem,api.key), got {text!r}"
        )
    try:
        return {"names": [server_name(name)], "cert": Path(cert), "key": Path(key)}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_sni_tables(value: object, base: Path) -> list[dict[str, Any]]:
    """The config file's ``[[sni]]`` array of tables, checked; ValueError says what is wrong."""
    if isinstance(value, dict):
        raise ValueError("expected [[sni]] tables (double brackets: one per certificate)")
    if not isinstance(value, list):
        raise ValueError(f"expected [[sni]] tables, got {value!r}")
    entries = []
    for number, table in enumerate(value, 1):
        where = f"[[sni]] table {number}"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table with {', '.join(_TABLE_KEYS)}")
        unknown = sorted(set(table) - set(_TABLE_KEYS))
        missing = [k for k in _TABLE_KEYS if k not in table]
        if unknown or missing:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            raise ValueError(f"{where}: {problem} (keys: {', '.join(_TABLE_KEYS)})")
        names = table["names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: names must be a non-empty list of strings")
        for key in ("cert", "key"):
            if not isinstance(table[key], str) or not table[key]:
                raise ValueError(f"{where}: {key} must be a path (a non-empty string)")
        try:
            checked = [server_name(n) for n in names]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        entries.append({"names": checked, "cert": base / table["cert"], "key": base / table["key"]})
    return merge_sni(entries)


def merge_sni(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per certificate and key; ValueError if a name is given twice."""
    merged: dict[tuple[Path, Path], dict[str, Any]] = {}
    seen: set[str] = set()
    for entry in entries:
        for name in entry["names"]:
            if name in seen:
                raise ValueError(f"server name {name} is given twice")
            seen.add(name)
        into = merged.setdefault((entry["cert"], entry["key"]), {**entry, "names": []})
        into["names"] = into["names"] + list(entry["names"])
    return list(merged.values())


def merge_sni_flags(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`merge_sni` for the ``--sni`` flags: ConfigError naming the flag."""
    try:
        return merge_sni(entries)
    except ValueError as exc:
        raise ConfigError(f"--sni: {exc}") from None


def sni_certificates(entries: Iterable[dict[str, Any]]) -> tuple[CertificateSettings, ...]:
    """``ServerSettings.sni_certificates`` for the option's entries."""
    return tuple(
        CertificateSettings(e["cert"], e["key"], server_names=tuple(e["names"])) for e in entries
    )
