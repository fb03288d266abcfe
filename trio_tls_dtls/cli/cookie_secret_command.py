"""``trio-tlsd cookie-secret``: write a DTLS cookie master secret for several servers to share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.dtls_cookie import write_secret_file

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "cookie-secret",
        help="write a DTLS cookie secret file",
        description="Write a random DTLS cookie master secret (hex, mode 0600) to FILE. "
        "Servers given the same file accept each other's cookies.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = write_secret_file(args.file, overwrite=args.force)
    print(f"cookie secret written to {path}", file=sys.stderr)
    return 0
