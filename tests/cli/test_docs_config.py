"""The docs cannot drift from the code: the config reference and the runnable examples.

docs/reference/config.rst is written by hand; these tests keep it in step:
every key of ``config_file.DEFAULTS`` has a row, no row names a key the code
does not know, each row's default is the code's default, and each row's flag
is a real ``serve`` flag. The programs under docs/examples/, which the how-to
guides include, are run against a development PKI and must print what the
guides show.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls.cli.config_file import DEFAULTS, render_options
from trio_tls_dtls.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
CONFIG_RST = ROOT / "docs" / "reference" / "config.rst"
EXAMPLES = ROOT / "docs" / "examples"
SERVE = [sys.executable, "-m", "trio_tls_dtls", "serve"]

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


def example_env() -> dict[str, str]:
    """The environment with this checkout first on the import path."""
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))


def run_example(name: str, cwd: Path, *args: str) -> str:
    """Run docs/examples/NAME in *cwd* (which holds ./certs); its stdout."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=example_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def certs_dir(tmp_path: Path, pki: PKIFiles) -> Path:
    """A folder with the development PKI in ./certs, as the examples expect."""
    shutil.copytree(pki.dir, tmp_path / "certs")
    return tmp_path


@pytest.mark.timeout(90)
def test_embed_example_runs(certs_dir: Path) -> None:
    out = run_example("embed.py", certs_dir).splitlines()
    assert out[0].startswith("TLS: TLSv1.3 ")
    assert out[1].startswith("b'hello CN=")  # the client certificate's subject
    assert out[2] == "b'SHOUT THIS'"
    assert out[3:] == [
        "DTLS: DTLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
        "b'1: one'",
        "b'2: two'",
        "TLS stats: 1 handshake(s) ok",
        "DTLS stats: 1 handshake(s) ok",
    ]


@pytest.mark.timeout(90)
def test_embed_service_example_runs(certs_dir: Path) -> None:
    out = run_example("embed_service.py", certs_dir).splitlines()
    assert out[0].startswith("serving on port ")
    assert out[1:] == [
        "b'desserts'",
        "b'reward'",
        "client sees end of stream: True",
        "still open after drain: 0",
        "TLS: 1 connections, 1 handshakes ok, 0 failed; DTLS: 1 peers, 1 handshakes ok, 0 failed",
    ]


@pytest.mark.timeout(90)
def test_unanswered_hellos_example_gets_only_hello_verify_requests(certs_dir: Path) -> None:
    server = subprocess.Popen(
        [*SERVE, "--dtls-only", "--host", "127.0.0.1", "--port", "0"],
        cwd=certs_dir,
        env=example_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        first = server.stderr.readline()  # "...: DTLS on udp 127.0.0.1:PORT"
        match = re.search(r"udp 127\.0\.0\.1:(\d+)", first)
        assert match, first
        out = run_example("unanswered_hellos.py", certs_dir, match.group(1), "5")
        assert re.fullmatch(r"5 ClientHellos of \d+ bytes; answers of \[60\] bytes\n", out), out
    finally:
        server.terminate()
        server.wait(timeout=30)
