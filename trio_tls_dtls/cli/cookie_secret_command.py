"""``trio-tlsd cookie-secret``: write a DTLS cookie master secret for several servers to share.

``FILE`` is created mode 0600 and never overwritten without ``--force``.
``-`` or ``/dev/stdout`` prints the secret instead, for a secret store
(``kubectl create secret ... --from-literal=cookie.key="$(trio-tlsd
cookie-secret -)"``): opening ``/dev/stdout`` as a new file would fail, since
it exists, or, with stdout redirected to a file, refuse that file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.dtls_cookie import new_secret_text, write_secret_file

__all__ = ["add_parser", "run"]

_STDOUT = ("-", "/dev/stdout")


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "cookie-secret",
        help="write a DTLS cookie secret file",
        description="Write a random DTLS cookie master secret (hex, mode 0600) to FILE, "
        "or print it with FILE '-' (or /dev/stdout). "
        "Servers given the same secret accept each other's cookies.",
    )
    p.add_argument("file", metavar="FILE", help="where to write it; - for stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.file in _STDOUT:
        sys.stdout.write(new_secret_text())
        sys.stdout.flush()
        return 0
    path = write_secret_file(Path(args.file), overwrite=args.force)
    print(f"cookie secret written to {path}", file=sys.stderr)
    return 0
