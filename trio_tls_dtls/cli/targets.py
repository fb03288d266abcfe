"""HOST:PORT targets and client-side settings shared by ``trio-tlsd client`` and ``bench``.

Both commands take a target on the command line and connect to it as a
client; both must turn "nothing listening", "wrong certificate" and a
malformed target into one line naming the target, not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import trio

from ..core.errors import HandshakeError, TLSDError
from ..core.psk import load_psk_file
from ..core.settings import CertificateSettings, ClientSettings

__all__ = [
    "Target",
    "TargetError",
    "add_client_tls_flags",
    "client_settings",
    "connect_failure",
    "parse_target",
]


class TargetError(TLSDError):
    """The target could not be reached, or refused us (one line, names the target)."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``host:port``, ``1.2.3.4:port`` or ``[::1]:port``; argparse-friendly errors."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise argparse.ArgumentTypeError(f"unclosed '[' in {text!r}: write [::1]:4433")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"IPv6 addresses need brackets: write [{host}]:{port_text}, not {text!r}"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, not {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {port}")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return Target(host, port)


def add_client_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--cert/--key/--ca/--insecure/--servername, as both commands spell them."""
    parser.add_argument("--cert", type=Path, help="client certificate chain (PEM), for mutual TLS")
    parser.add_argument("--key", type=Path, help="client private key (PEM), for mutual TLS")
    parser.add_argument("--ca", type=Path, help="CA file to verify the server with")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate or name (testing only)",
    )
    parser.add_argument(
        "--servername", metavar="NAME", help="name to send as SNI and verify (default: HOST)"
    )
    parser.add_argument(
        "--psk-identity", metavar="ID", help="offer this pre-shared key identity (with --psk-file)"
    )
    parser.add_argument(
        "--psk-file",
        type=Path,
        metavar="FILE",
        help="IDENTITY:HEXKEY lines, as serve reads them; the key of --psk-identity is used",
    )


def client_settings(args: argparse.Namespace, **options: object) -> ClientSettings:
    """ClientSettings from the shared flags; raises TLSDError for a half-given pair."""
    if (args.cert is None) != (args.key is None):
        raise TargetError("--cert and --key go together: give both or neither")
    certificate = None if args.cert is None else CertificateSettings(args.cert, args.key)
    if (args.psk_identity is None) != (args.psk_file is None):
        raise TargetError("--psk-identity and --psk-file go together: give both or neither")
    if args.psk_identity is not None:
        # The key comes from a file (checked as serve checks it), never from
        # the command line, where every user's ps would show it.
        key = load_psk_file(args.psk_file).get(args.psk_identity)
        if key is None:
            raise TargetError(f"psk_file {args.psk_file} has no identity {args.psk_identity!r}")
        options.update(psk_identity=args.psk_identity, psk_key=key)
    return ClientSettings(
        ca_file=args.ca,
        certificate=certificate,
        verify=not args.insecure,
        **options,  # type: ignore[arg-type]
    )


def connect_failure(exc: BaseException, proto: str, target: Target) -> TargetError:
    """One actionable line for a failed connect or handshake to *target*."""
    where = f"{proto} {target}"
    if isinstance(exc, HandshakeError):
        # "link failed" says less than the message, which names the cause.
        detail = str(exc) if exc.reason == "link failed" else exc.reason
        return TargetError(f"{proto.upper()} handshake with {target} failed: {detail}")
    if _refused(exc):
        return TargetError(f"cannot connect to {where}: connection refused (nothing listening?)")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return TargetError(f"cannot connect to {where}: {reason}")
    if isinstance(exc, TLSDError):
        return TargetError(f"{where}: {exc}")
    if isinstance(exc, trio.BrokenResourceError):
        # After a TLS 1.3 handshake, the server's verdict on our certificate
        # arrives as an alert on the first read.
        return TargetError(f"{where}: the server ended the connection: {exc}")
    return TargetError(f"{where}: {type(exc).__name__}: {exc}")


def _refused(exc: BaseException) -> bool:
    """Connection refused, here or in trio's "all attempts failed" group."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return True
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return False
