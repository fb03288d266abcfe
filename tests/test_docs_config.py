"""docs/reference/config.rst lists exactly the config keys the code accepts, with their defaults.

The table is written by hand; this test keeps it from drifting: every key of
``config_file.DEFAULTS`` has a row, no row names a key the code does not
know, each row's default is the code's default, and each row's flag is a
real ``serve`` flag.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from trio_tls_dtls.cli import build_parser
from trio_tls_dtls.config_file import DEFAULTS, render_options

CONFIG_RST = Path(__file__).resolve().parent.parent / "docs" / "reference" / "config.rst"

_ROW = re.compile(r"^   \* - (.*)$")
_CELL = re.compile(r"^     - ?(.*)$")
_MORE = re.compile(r"^       (.*)$")
_LITERAL = re.compile(r"``(.+?)``")


def key_rows(text: str) -> list[list[str]]:
    """The rows of the list-table under the "Keys" heading, as lists of cell texts."""
    section = text.split("\nKeys\n----\n", 1)[1]
    table = section.split(".. list-table::", 1)[1]
    rows: list[list[str]] = []
    for line in table.splitlines():
        if m := _ROW.match(line):
            rows.append([m.group(1)])
        elif rows and (m := _CELL.match(line)):
            rows[-1].append(m.group(1))
        elif rows and (m := _MORE.match(line)):
            rows[-1][-1] += " " + m.group(1)
        elif rows and line and not line.startswith(" "):
            break  # the end of the table
    header, *body = rows
    assert header[0] == "Key"
    assert all(len(row) == len(header) for row in rows), rows
    return body


def documented() -> dict[str, list[str]]:
    rows = key_rows(CONFIG_RST.read_text(encoding="utf-8"))
    table: dict[str, list[str]] = {}
    for row in rows:
        match = re.fullmatch(r"``(\w+)``", row[0])
        assert match, f"first cell is not a ``key``: {row[0]!r}"
        key = match.group(1)
        assert key not in table, f"{key} is listed twice"
        table[key] = row
    return table


def code_defaults() -> dict[str, str | None]:
    """Each key's default as the TOML text check-config prints, or None if unset."""
    defaults: dict[str, str | None] = {}
    for line in render_options(DEFAULTS).splitlines():
        if m := re.fullmatch(r"# (\w+) is not set", line):
            defaults[m.group(1)] = None
        else:
            name, value = line.split(" = ", 1)
            defaults[name] = value
    return defaults


def serve_flags() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve = action.choices["serve"]
            return {flag for a in serve._actions for flag in a.option_strings}
    raise AssertionError("no serve command")


def test_every_key_is_documented_and_no_other() -> None:
    keys = set(documented())
    assert keys == set(DEFAULTS), (
        f"missing from docs/reference/config.rst: {sorted(set(DEFAULTS) - keys)}; "
        f"documented but not in config_file.DEFAULTS: {sorted(keys - set(DEFAULTS))}"
    )


def test_documented_defaults_match_the_code() -> None:
    table = documented()
    for key, default in code_defaults().items():
        cell = table[key][2]
        if default is None:
            assert cell.startswith("not set"), f"{key}: docs say {cell!r}, code has no default"
        else:
            literal = _LITERAL.match(cell)
            assert literal and literal.group(1) == default, (
                f"{key}: docs say {cell!r}, code default is {default}"
            )


def test_documented_flags_exist() -> None:
    flags = serve_flags()
    for key, row in documented().items():
        named = [f for f in _LITERAL.findall(row[3]) if f.startswith("--")]
        assert named, f"{key}: no flag named in {row[3]!r}"
        for flag in named:
            assert flag in flags, f"{key}: {flag} is not a serve flag"
