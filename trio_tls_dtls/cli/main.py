"""trio-tlsd: the command line's parser and dispatch.

Each command lives in a module of its own that adds its subparser and
runs it: ``serve`` (:mod:`.serve_flags`, :mod:`.serve_settings`,
:mod:`.serve_command`), ``certs``, ``cookie-secret``, ``check-config``,
``client``, ``bench``. This module builds the parser from them, configures
logging and runs the command.

Every user error (a missing file, a bad value, a port in use) ends in one
line on stderr and exit status 2, never a traceback: the errors raised by
the commands already name the file, flag or port at fault.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..core.errors import TLSDError
from ..service.log_format import TEXT_FORMAT, status_line
from . import certs_command, check_config_command, cookie_secret_command, serve_flags

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trio-tlsd", description="Trio-native TLS and DTLS service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging threshold (default: info)",
    )
    # Not required=True: argparse would then say only "the following
    # arguments are required: command"; main() prints the usage instead.
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    certs_command.add_parser(commands)
    serve_flags.add_parser(commands)
    cookie_secret_command.add_parser(commands)
    check_config_command.add_parser(commands)
    from . import bench
    from . import client_command as client_cmd  # their own modules own their flags

    client_cmd.add_parser(commands)
    bench.add_parser(commands)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), format=TEXT_FORMAT, stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-tlsd`` and ``python -m trio_tls_dtls``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # Bare `trio-tlsd`: what it takes, and where to read more.
        parser.print_usage(sys.stderr)
        print(
            f"{parser.prog}: error: no command given; "
            f"run '{parser.prog} --help' for the commands, '{parser.prog} COMMAND --help' for one",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _configure_logging(args.log_level)
    try:
        result: int = args.run(args)
    # ValueError: e.g. ensure_dev_pki on a half-made folder.
    except (TLSDError, ValueError) as exc:
        print(
            status_line(f"trio-tlsd: error: {_one_line(exc)}", level=logging.ERROR), file=sys.stderr
        )
        return EXIT_USAGE
    return result


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
