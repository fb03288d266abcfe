"""trio-tlsd: the command line.

Every user error (a missing file, a bad value, a port in use) ends in one
line on stderr and exit status 2, never a traceback: the errors raised
below already name the file, flag or port at fault.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypedDict

import trio

from .. import __version__
from ..core.dtls_cookie import write_secret_file
from ..core.errors import ConfigError, TLSDError
from ..core.networks import parse_networks
from ..core.peer_info import format_address
from ..core.settings import (
    DEFAULT_DTLS_MTU,
    MAX_DTLS_MTU,
    MIN_DTLS_MTU,
    CertificateSettings,
    ServerSettings,
    VerifyClient,
)
from ..drivers.dtls.server import DTLSHandler
from ..drivers.tls.server import TLSHandler
from ..service.forward import forward_tcp, forward_udp
from ..service.log_format import TEXT_FORMAT, make_formatter, status_line
from ..service.metrics import serve_metrics
from ..service.privileges import Identity, drop_privileges, lookup_identity, resolve_identity
from ..service.service import Service
from ..service.workers import SharedState, Supervisor, shared_state_factory, worker_count
from .config_file import DEFAULT_PORT, DEFAULTS, load_config_file, render_options
from .dev_pki import DEV_PKI_FILES, ensure_dev_pki, make_dev_pki, write_dev_pki
from .targets import parse_target

__all__ = ["build_parser", "main"]

logger = logging.getLogger("trio_tls_dtls.cli")


DEFAULT_CERT_DIR = Path("certs")
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- value parsers: each error names the value and what was expected -----


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer 0-65535, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def _metrics_port(text: str) -> int:
    value = _port(text)
    if value == 0:  # worker k serves on P + k: a fixed port is needed
        raise argparse.ArgumentTypeError("metrics port must be 1-65535, not 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text}")
    return value


def _optional_seconds(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "0"} else _seconds(text)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number per second, not {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected 0 (off) or a positive number, not {text}")
    return value


def _network_list(text: str) -> list[str]:
    """Comma-separated addresses or CIDR networks; ``none`` is the empty list."""
    if text.strip().lower() == "none":
        return []
    entries = [part.strip() for part in text.split(",") if part.strip()]
    try:
        parse_networks(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, not {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_count_or_off = _int_at_least(0, "0 (off) or a positive integer")


def _target_text(text: str) -> str:
    parse_target(text)  # raises argparse.ArgumentTypeError with the reason
    return text


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number or "auto", not {text!r}') from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"expected 1-1024 worker processes, not {value}")
    return value


def _mtu(text: str) -> int:
    value = _positive_int(text)
    if not MIN_DTLS_MTU <= value <= MAX_DTLS_MTU:
        raise argparse.ArgumentTypeError(
            f"MTU must be {MIN_DTLS_MTU}-{MAX_DTLS_MTU} bytes, not {value}"
        )
    return value


# -- the parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trio-tlsd", description="Trio-native TLS and DTLS service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging threshold (default: info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_certs(commands)
    _add_serve(commands)
    _add_cookie_secret(commands)
    _add_check_config(commands)
    from . import bench
    from . import client_command as client_cmd  # their own modules own their flags

    client_cmd.add_parser(commands)
    bench.add_parser(commands)
    return parser


def _add_certs(commands: argparse._SubParsersAction[_Parser]) -> None:
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
    p.set_defaults(run=_run_certs)


def _add_serve(commands: argparse._SubParsersAction[_Parser]) -> None:
    # No argparse defaults: a flag that is not given must not override the
    # config file. The defaults live in config_file.DEFAULTS.
    p = commands.add_parser(
        "serve",
        help="serve TLS and DTLS echo",
        description="Serve echo over TLS (TCP) and DTLS (UDP) on the same port number. "
        "Without --cert/--key, uses ./certs (made on first run). "
        "Flags override the --config file.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file of these options")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--tls-only", action="store_true", help="serve TLS over TCP only")
    only.add_argument("--dtls-only", action="store_true", help="serve DTLS over UDP only")
    p.add_argument("--host", help="address to listen on (default: localhost)")
    p.add_argument("--port", type=_port, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--cert", type=Path, help="certificate chain file (PEM)")
    p.add_argument("--key", type=Path, help="private key file (PEM)")
    p.add_argument("--key-password-file", type=Path, help="file holding the key's passphrase")
    p.add_argument(
        "--ocsp-staple",
        type=Path,
        metavar="FILE",
        help="DER OCSP response to staple (re-read on SIGHUP; see docs/howto/ocsp)",
    )
    p.add_argument("--ca", type=Path, help="CA file that signs client certificates")
    p.add_argument(
        "--verify-client",
        choices=[v.value for v in VerifyClient],
        help="ask for client certificates (default: none)",
    )
    p.add_argument(
        "--crl-file",
        type=Path,
        metavar="FILE",
        help="CRLs (PEM or DER) from the --ca CAs; revoked client certificates are refused",
    )
    p.add_argument(
        "--allow-client-subject",
        action="append",
        metavar="SUBJECT",
        help="admit only client certificates with this subject, e.g. 'CN=dev-7,O=Org' "
        "(repeatable; needs --verify-client required; see docs/howto/identity)",
    )
    p.add_argument(
        "--allow-client-san",
        action="append",
        metavar="NAME",
        help="admit client certificates with this DNS name (*.example.com) or URI "
        "(spiffe://domain/path, or a prefix ending in /*) (repeatable)",
    )
    p.add_argument(
        "--min-version", choices=["1.2", "1.3"], help="lowest TLS version (default: 1.2)"
    )
    p.add_argument(
        "--alpn",
        action="append",
        metavar="PROTO",
        help="ALPN protocol (repeatable); a client offering none of them is refused",
    )
    p.add_argument(
        "--psk-file",
        type=Path,
        metavar="FILE",
        help="pre-shared keys, IDENTITY:HEXKEY per line, mode 0600 "
        "(re-read on SIGHUP; see docs/howto/psk)",
    )
    p.add_argument(
        "--keylog-file", type=Path, help="append TLS secrets here (SSLKEYLOGFILE format)"
    )
    p.add_argument("--no-session-tickets", action="store_true", help="disable session resumption")
    p.add_argument("--handshake-timeout", type=_seconds, metavar="S", help="default: 10")
    p.add_argument(
        "--idle-timeout", type=_optional_seconds, metavar="S", help="default: 300; 0 = none"
    )
    p.add_argument("--max-connections", type=_positive_int, metavar="N", help="default: 1024")
    p.add_argument(
        "--per-source-rate",
        type=_rate,
        metavar="R",
        help="new handshakes/s per source (IPv4 address, IPv6 /64); default: 50, 0 = off",
    )
    p.add_argument(
        "--per-source-burst",
        type=_positive_int,
        metavar="N",
        help="handshakes a quiet source may start at once (default: 100)",
    )
    p.add_argument(
        "--per-source-connections",
        type=_count_or_off,
        metavar="N",
        help="concurrent TLS connections / DTLS peers per source (default: 256; 0 = off)",
    )
    p.add_argument(
        "--per-source-exempt",
        type=_network_list,
        metavar="CIDR,...",
        help='networks not limited (default: 127.0.0.0/8,::1/128; "none" = limit all)',
    )
    p.add_argument(
        "--drain-timeout",
        type=_seconds,
        metavar="S",
        help="on SIGINT/SIGTERM, how long open connections get to finish (default: 10)",
    )
    p.add_argument(
        "--forward-tcp",
        type=_target_text,
        metavar="HOST:PORT",
        help="forward TLS connections' plaintext to this TCP backend (default: echo)",
    )
    p.add_argument(
        "--forward-udp",
        type=_target_text,
        metavar="HOST:PORT",
        help="forward each DTLS peer's datagrams to this UDP backend (default: echo)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default: text)",
    )
    p.add_argument(
        "--metrics-port",
        type=_metrics_port,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics (default: off)",
    )
    p.add_argument("--metrics-host", help="address for --metrics-port (default: 127.0.0.1)")
    p.add_argument(
        "--user",
        metavar="NAME",
        help="after binding, drop root and run as this user (needs root; see docs/howto/deploy)",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="with --user: run as this group (default: the user's primary group)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT); auto = one per CPU (default: 1)",
    )
    proxy = p.add_argument_group("PROXY protocol (TLS behind a layer-4 load balancer)")
    proxy.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY v1/v2 header before TLS and log/limit by its client address",
    )
    proxy.add_argument(
        "--proxy-trusted",
        type=_network_list,
        action="extend",
        metavar="CIDR[,CIDR...]",
        help="who may send that header (repeatable; default: 127.0.0.1/32,::1/128)",
    )
    dtls = p.add_argument_group("DTLS")
    dtls.add_argument(
        "--mtu",
        type=_mtu,
        metavar="BYTES",
        help=f"largest datagram sent (default: {DEFAULT_DTLS_MTU})",
    )
    dtls.add_argument("--max-peers", type=_positive_int, metavar="N", help="default: 1024")
    dtls.add_argument(
        "--cookie-secret-file",
        type=Path,
        metavar="FILE",
        help="cookie master secret shared by several servers (see: trio-tlsd cookie-secret)",
    )
    p.set_defaults(run=_run_serve)


def _add_check_config(commands: argparse._SubParsersAction[_Parser]) -> None:
    p = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective configuration",
        description="Check FILE (TOML) as `serve --config FILE` would, load its certificates "
        "and keys, and print every option with its effective value.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(run=_run_check_config)


def _add_cookie_secret(commands: argparse._SubParsersAction[_Parser]) -> None:
    p = commands.add_parser(
        "cookie-secret",
        help="write a DTLS cookie secret file",
        description="Write a random DTLS cookie master secret (hex, mode 0600) to FILE. "
        "Servers given the same file accept each other's cookies.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=_run_cookie_secret)


# -- commands -------------------------------------------------------------------


def _run_certs(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    existing = [name for name in DEV_PKI_FILES if (folder / name).exists()]
    if existing and not args.force:
        raise TLSDError(f"{folder} already holds {', '.join(existing)}; use --force to overwrite")
    names = args.server_name or ["localhost", "127.0.0.1", "::1"]
    written = write_dev_pki(folder, make_dev_pki(key_type=args.key_type, server_names=names))
    for path in written.values():
        print(path)
    print(f"development PKI written to {folder}/ (not for production use)", file=sys.stderr)
    return 0


def _read_password(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise TLSDError(f"cannot read key password file {path}: {exc.strerror}") from None


def _serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the --config file, then the flags given."""
    options = dict(DEFAULTS)
    config = getattr(args, "config", None)
    if config is not None:
        options.update(load_config_file(config))
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    options.update(flags)
    if getattr(args, "no_session_tickets", False):
        options["session_tickets"] = False
    if getattr(args, "tls_only", False):
        options["protocols"] = ["tls"]
    if getattr(args, "dtls_only", False):
        options["protocols"] = ["dtls"]
    return options


def _settings_from(options: dict[str, Any], *, make_dev_pki: bool) -> tuple[ServerSettings, bool]:
    """ServerSettings from the options; the bool says if the development PKI is used."""
    if (options["cert"] is None) != (options["key"] is None):
        raise TLSDError("--cert and --key (cert and key) go together: give both or neither")
    ca = options["ca"]
    dev = options["cert"] is None
    if dev:
        if make_dev_pki and ensure_dev_pki(DEFAULT_CERT_DIR):
            logger.warning(
                "no --cert/--key given: created a development PKI in %s/ (not for production)",
                DEFAULT_CERT_DIR,
            )
        cert, key = DEFAULT_CERT_DIR / "server.pem", DEFAULT_CERT_DIR / "server.key"
        if ca is None and options["verify_client"] != "none":
            ca = DEFAULT_CERT_DIR / "ca.pem"
    else:
        cert, key = options["cert"], options["key"]
    settings = ServerSettings(
        certificate=CertificateSettings(
            cert,
            key,
            _read_password(options["key_password_file"]),
            ocsp_staple_file=options["ocsp_staple"],
        ),
        ca_file=ca,
        verify_client=VerifyClient(options["verify_client"]),
        crl_file=options["crl_file"],
        allow_client_subjects=tuple(options["allow_client_subject"] or ()),
        allow_client_sans=tuple(options["allow_client_san"] or ()),
        min_version=options["min_version"],
        alpn=tuple(options["alpn"] or ()),
        psk_file=options["psk_file"],
        keylog_file=options["keylog_file"],
        session_tickets=options["session_tickets"],
        handshake_timeout=options["handshake_timeout"],
        idle_timeout=options["idle_timeout"],
        max_connections=options["max_connections"],
        per_source_rate=options["per_source_rate"],
        per_source_burst=options["per_source_burst"],
        per_source_connections=options["per_source_connections"],
        per_source_exempt=tuple(options["per_source_exempt"]),
        drain_timeout=options["drain_timeout"],
        mtu=options["mtu"],
        max_peers=options["max_peers"],
        cookie_secret_file=options["cookie_secret_file"],
        proxy_protocol=options["proxy_protocol"],
        proxy_trusted=tuple(options["proxy_trusted"]),
    )
    return settings, dev


def _run_check_config(args: argparse.Namespace) -> int:
    options = dict(DEFAULTS)
    options.update(load_config_file(args.file))
    if options["user"] is not None:  # the names only: check-config need not run as root
        lookup_identity(options["user"], options["group"])
    settings, dev = _settings_from(options, make_dev_pki=False)
    if dev and not (DEFAULT_CERT_DIR / "server.pem").exists():
        print("# no cert/key: `serve` would create a development PKI in ./certs")
    else:
        # Load every certificate, key and secret, as serve would.
        Service(settings, tls="tls" in options["protocols"], dtls="dtls" in options["protocols"])
    print(render_options(options))
    print(f"{args.file}: OK", file=sys.stderr)
    return 0


def _run_cookie_secret(args: argparse.Namespace) -> int:
    path = write_secret_file(args.file, overwrite=args.force)
    print(f"cookie secret written to {path}", file=sys.stderr)
    return 0


def connect_hint(port: int, settings: ServerSettings, dev: bool, *, dtls: bool = False) -> str:
    """The openssl s_client command line that connects to this server."""
    parts = ["openssl s_client"]
    if dtls:
        parts.append("-dtls1_2")
    parts.append(f"-connect localhost:{port} -servername localhost")
    if dev:
        parts.append(f"-CAfile {DEFAULT_CERT_DIR / 'ca.pem'} -verify_return_error")
        if settings.verify_client is not VerifyClient.NONE:
            parts.append(
                f"-cert {DEFAULT_CERT_DIR / 'client.pem'} -key {DEFAULT_CERT_DIR / 'client.key'}"
            )
    return " ".join(parts)


def _identity(options: dict[str, Any]) -> Identity | None:
    """Who to become after binding (--user/--group), resolved before anything is bound."""
    if options["user"] is None:
        if options["group"] is not None:
            raise ConfigError("--group needs --user")
        return None
    return resolve_identity(options["user"], options["group"])


async def _serve(
    options: dict[str, Any], service: Service, dev: bool, worker: int | None = None
) -> int:
    # Bind before starting any task, so a port in use is a plain ListenError;
    # drop root (--user) right after, before any peer is accepted.
    identity: Identity | None = options.get("identity")
    await service.bind(
        options["port"],
        options["host"],
        reuse_port=worker is not None,
        after_bind=None if identity is None else partial(drop_privileges, identity),
    )
    who = "trio-tlsd" if worker is None else f"trio-tlsd: worker {worker} (pid {os.getpid()})"
    forced = False
    left = [0]  # connections and peers still open when we stopped them
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            if options["metrics_port"] is not None:
                metrics_port = await nursery.start(
                    partial(
                        serve_metrics,
                        service,
                        options["metrics_port"],
                        host=options["metrics_host"],
                    )
                )
                logger.info(
                    "metrics at http://%s/metrics",
                    format_address((options["metrics_host"], metrics_port)),
                )
            print(
                status_line(f"{who}: serving {_what(options, service)}: {service.describe()}"),
                file=sys.stderr,
            )
            if service.dtls is not None:
                logger.info("DTLS cookie secret fingerprint %s", service.dtls.cookies.fingerprint)
            if service.tls is not None and service.settings.proxy_protocol:
                trusted = ", ".join(service.settings.proxy_trusted)
                logger.info("TLS expects a PROXY protocol header, trusted from: %s", trusted)
            for is_dtls, server in ((False, service.tls), (True, service.dtls)):
                if server is not None and not worker:
                    hint = connect_hint(service.port, service.settings, dev, dtls=is_dtls)
                    print(status_line(f"connect with: {hint}"), file=sys.stderr)
            sys.stderr.flush()
            draining = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    service.reload()
                    continue
                if draining:
                    logger.warning("%s received again: stopping now", name)
                    forced = True
                    left[0] = service.open_count()
                    nursery.cancel_scope.cancel()
                    break
                draining = True
                logger.info(
                    "%s received: draining %d open (up to %gs; again to stop now)",
                    name,
                    service.open_count(),
                    service.settings.drain_timeout,
                )
                nursery.start_soon(_drain_then_stop, service, nursery.cancel_scope, left)
    how = "stopped at once by a second signal" if forced else "drained"
    print(
        status_line(f"{who}: {how}: {service.summary()}; {left[0]} still open when stopped"),
        file=sys.stderr,
    )
    return 1 if forced else 0


async def _drain_then_stop(service: Service, scope: trio.CancelScope, left: list[int]) -> None:
    with trio.move_on_after(service.settings.drain_timeout):
        await service.drain()
    left[0] = service.open_count()
    scope.cancel()


def _run_serve(args: argparse.Namespace) -> int:
    options = _serve_options(args)
    _use_log_format(options["log_format"])
    options["identity"] = _identity(options)  # an unknown user fails before binding
    settings, dev = _settings_from(options, make_dev_pki=True)
    protocols = options["protocols"]
    tls, dtls = "tls" in protocols, "dtls" in protocols
    count = worker_count(options["workers"])
    if count == 1:
        # Contexts and the cookie secret are built here: bad files fail before binding.
        service = Service(settings, tls=tls, dtls=dtls, **_handlers(options))
        return trio.run(_serve, options, service, dev)
    return _run_workers(options, settings, dev, count)


class _Handlers(TypedDict, total=False):
    tls_handler: TLSHandler
    dtls_handler: DTLSHandler


def _handlers(options: dict[str, Any]) -> _Handlers:
    """Forwarding handlers where a backend is configured; echo (the default) elsewhere."""
    handlers: _Handlers = {}
    if options["forward_tcp"]:
        target = parse_target(options["forward_tcp"])
        handlers["tls_handler"] = forward_tcp(target.host, target.port)
    if options["forward_udp"]:
        target = parse_target(options["forward_udp"])
        handlers["dtls_handler"] = forward_udp(target.host, target.port)
    return handlers


def _what(options: dict[str, Any], service: Service) -> str:
    """What the service does, for the startup line."""
    parts = []
    for proto, key, server in (
        ("TLS", "forward_tcp", service.tls),
        ("DTLS", "forward_udp", service.dtls),
    ):
        if server is not None:
            backend = options[key]
            parts.append(f"{proto} forwarded to {backend}" if backend else f"{proto} echo")
    return ", ".join(parts)


def _run_workers(options: dict[str, Any], settings: ServerSettings, dev: bool, count: int) -> int:
    if options["port"] == 0:
        raise ConfigError("--workers needs a fixed --port (with port 0 each would get its own)")
    metrics_port = options["metrics_port"]
    if metrics_port is not None and metrics_port + count - 1 > 65535:
        raise ConfigError(f"--metrics-port {metrics_port}: no room for ports P..P+{count - 1}")
    tls, dtls = "tls" in options["protocols"], "dtls" in options["protocols"]
    # Contexts and the cookie secret are built in this (parent) process, before
    # any fork: every worker gets the same ticket keys and cookie secret.
    prepare = shared_state_factory(settings, tls=tls, dtls=dtls)

    def run_worker(index: int, shared: SharedState) -> int:
        service = Service(
            settings,
            tls=tls,
            dtls=dtls,
            tls_context=shared.tls,
            dtls_context=shared.dtls,
            cookies=shared.cookies,
            **_handlers(options),
        )
        worker_options = dict(options)
        if worker_options.get("metrics_port") is not None:  # one metrics port per worker
            worker_options["metrics_port"] += index
        return trio.run(_serve, worker_options, service, dev, index)

    print(
        status_line(f"trio-tlsd: starting {count} workers on port {options['port']}"),
        file=sys.stderr,
    )
    supervisor = Supervisor(count, prepare, run_worker)
    status = supervisor.run()
    print(
        status_line(
            f"trio-tlsd: all workers stopped ({supervisor.restarts} restarted after a crash)"
        ),
        file=sys.stderr,
    )
    return status


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), format=TEXT_FORMAT, stream=sys.stderr
    )


def _use_log_format(kind: str) -> None:
    formatter = make_formatter(kind)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-tlsd`` and ``python -m trio_tls_dtls``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        result: int = args.run(args)
    except TLSDError as exc:
        print(
            status_line(f"trio-tlsd: error: {_one_line(exc)}", level=logging.ERROR), file=sys.stderr
        )
        return EXIT_USAGE
    except ValueError as exc:  # e.g. ensure_dev_pki on a half-made folder
        print(
            status_line(f"trio-tlsd: error: {_one_line(exc)}", level=logging.ERROR), file=sys.stderr
        )
        return EXIT_USAGE
    return result


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
