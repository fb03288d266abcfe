"""``trio-tlsd check-config``: check a config file as ``serve`` would, print the result.

It runs the same steps as ``serve`` up to binding (the options, the
``user``/``group`` names, the settings, and the certificates, keys and
cookie secret they name, loaded into the same SSL contexts), so a file it
passes is one ``serve --config`` starts with. It binds nothing and needs no
root: ``user`` and ``group`` are only looked up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
        # Load every certificate, key and secret, as serve would.
        Service(settings, tls="tls" in options["protocols"], dtls="dtls" in options["protocols"])
    print(render_options(options))
    print(f"{args.file}: OK", file=sys.stderr)
    return 0
