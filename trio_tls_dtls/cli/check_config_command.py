"""``trio-tlsd check-config``: check a config file as ``serve`` would, print the result.

It runs the same steps as ``serve`` up to binding (the options, the
``user``/``group`` names, the settings, and the certificates, keys and
cookie secret they name, loaded into the same SSL contexts), so a file it
passes is one ``serve --config`` starts with. It binds nothing and needs no
root: ``user`` and ``group`` are only looked up.

It only reads: it writes, creates and truncates nothing. ``serve`` has two
side effects before binding, and check-config checks each without it: it
does not make the development PKI (it says that serve would), and it checks
that the key log file could be opened for appending instead of creating it.
``tests/cli/test_config_file.py`` compares the folder tree before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..service.privileges import lookup_identity
from ..service.service import Service
from .config_file import DEFAULTS, load_config_file, render_options
from .dev_pki import DEFAULT_CERT_DIR
from .serve_settings import settings_from

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective configuration",
        description="Check FILE (TOML) as `serve --config FILE` would, load its certificates "
        "and keys, and print every option with its effective value.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = dict(DEFAULTS)
    options.update(load_config_file(args.file))
    if options["user"] is not None:  # the names only: check-config need not run as root
        lookup_identity(options["user"], options["group"])
    settings, dev = settings_from(options, make_dev_pki=False)
    if dev and not (DEFAULT_CERT_DIR / "server.pem").exists():
        print("# no cert/key: `serve` would create a development PKI in ./certs")
    else:
        # Load every certificate, key and secret, as serve would; but the
        # contexts would create the key log file: check its path instead.
        if settings.keylog_file is not None:
            check_appendable(settings.keylog_file, "key log file")
        readonly = dataclasses.replace(settings, keylog_file=None)
        Service(readonly, tls="tls" in options["protocols"], dtls="dtls" in options["protocols"])
    print(render_options(options))
    print(f"{args.file}: OK", file=sys.stderr)
    return 0


def check_appendable(path: Path, what: str) -> None:
    """Raise ConfigError unless *path* could be opened to append (or created), touching nothing."""
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"cannot open {what} {path}: it is a directory")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"cannot open {what} {path}: permission denied")
        return
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot open {what} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot open {what} {path}: folder {folder} is not writable")
