"""``trio-tlsd certs``: write the development PKI (a CA, a server and a client) to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.errors import TLSDError
from .dev_pki import (
    DEFAULT_CERT_DIR,
    DEFAULT_SERVER_NAMES,
    DEV_PKI_FILES,
    make_dev_pki,
    write_dev_pki,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "certs",
        help="write a development CA, server and client certificate",
        description="Write ca.pem, server.pem, server.key, client.pem and client.key to DIR. "
        "For development only: do not use these in production.",
    )
    p.add_argument(
        "--dir", type=Path, default=DEFAULT_CERT_DIR, help="output folder (default: certs)"
    )
    p.add_argument(
        "--key-type", choices=["ec", "rsa"], default="ec", help="ec = P-256 (default), rsa = 2048"
    )
    p.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="a DNS name or IP for the server certificate (repeatable; "
        "default: localhost, 127.0.0.1, ::1)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    existing = [name for name in DEV_PKI_FILES if (folder / name).exists()]
    if existing and not args.force:
        raise TLSDError(f"{folder} already holds {', '.join(existing)}; use --force to overwrite")
    names = args.server_name or list(DEFAULT_SERVER_NAMES)
    written = write_dev_pki(folder, make_dev_pki(key_type=args.key_type, server_names=names))
    for path in written.values():
        print(path)
    print(f"development PKI written to {folder}/ (not for production use)", file=sys.stderr)
    return 0
