"""``trio-tlsd certs``: write the development PKI; ``certs issue``: sign more from its CA.

``trio-tlsd certs`` writes a CA (its key too, mode 0600), a server and a
client certificate to a folder. ``trio-tlsd certs issue NAME`` loads that CA
from the folder and signs one more certificate, a server one for NAME (for
``serve --sni``) or, with ``--client``, a client one (more clients for mutual
TLS), written as ``NAME.pem`` and ``NAME.key``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.errors import TLSDError
from .dev_pki import (
    CA_KEY_FILE,
    DEFAULT_CERT_DIR,
    DEFAULT_SERVER_NAMES,
    DEV_PKI_FILES,
    issue_certificate,
    load_dev_ca,
    make_dev_pki,
    write_dev_pki,
    write_issued,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "certs",
        help="write a development CA, server and client certificate; issue more",
        description="Write ca.pem, ca.key, server.pem, server.key, client.pem and client.key "
        "to DIR; 'certs issue NAME' signs one more certificate with that CA. "
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
    p.set_defaults(run=run, certs_command=None)
    more = p.add_subparsers(dest="certs_command", metavar="issue", parser_class=type(p))
    issue = more.add_parser(
        "issue",
        help="sign another certificate with the development CA in DIR",
        description="Sign a certificate for NAME with DIR's development CA (ca.pem, ca.key) "
        "and write it as NAME.pem and NAME.key: a server certificate for NAME "
        "(for serve --sni), or with --client a client certificate whose subject is "
        "CN=NAME. A * in NAME is written as 'wildcard' in the file names.",
        # Options left out keep the values given before 'issue' (or certs' defaults).
        argument_default=argparse.SUPPRESS,
    )
    issue.add_argument("name", metavar="NAME", help="server name (or client common name)")
    issue.add_argument("--client", action="store_true", default=False, help="a client certificate")
    issue.add_argument(
        "--san",
        action="append",
        default=None,
        metavar="NAME",
        help="another subjectAltName: DNS name, IP address or URI such as "
        "spiffe://example.org/app (repeatable)",
    )
    issue.add_argument("--dir", type=Path, help="the CA's folder, written to (default: certs)")
    issue.add_argument("--key-type", choices=["ec", "rsa"], help="ec = P-256 (default), rsa = 2048")
    issue.add_argument("--force", action="store_true", help="overwrite NAME.pem and NAME.key")
    issue.set_defaults(run=run_issue)


def run(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    existing = [name for name in (*DEV_PKI_FILES, CA_KEY_FILE) if (folder / name).exists()]
    if existing and not args.force:
        raise TLSDError(f"{folder} already holds {', '.join(existing)}; use --force to overwrite")
    names = args.server_name or list(DEFAULT_SERVER_NAMES)
    written = write_dev_pki(folder, make_dev_pki(key_type=args.key_type, server_names=names))
    for path in written.values():
        print(path)
    print(f"development PKI written to {folder}/ (not for production use)", file=sys.stderr)
    return 0


def run_issue(args: argparse.Namespace) -> int:
    name: str = args.name
    stem = name.replace("*", "wildcard")
    if not stem or stem.startswith(".") or "/" in stem or "\\" in stem:
        raise TLSDError(f"certs issue: {name!r} cannot name a file (NAME.pem, NAME.key)")
    ca = load_dev_ca(args.dir)
    issued = issue_certificate(
        ca, name, client=args.client, sans=args.san or (), key_type=args.key_type
    )
    cert, key = write_issued(args.dir, stem, issued, overwrite=args.force)
    print(cert)
    print(key)
    kind = "client" if args.client else "server"
    print(f"{kind} certificate for {name} signed by {args.dir / 'ca.pem'}", file=sys.stderr)
    return 0
