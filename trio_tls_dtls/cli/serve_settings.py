"""From flags and the config file to what ``serve`` runs: options, settings, handlers.

``serve_options`` layers the defaults, the ``--config`` file and the flags
given, in that order (the serve flags have no argparse defaults, so a flag
left out never hides a file's value). ``settings_from`` turns those options
into :class:`~trio_tls_dtls.core.settings.ServerSettings`, falling back on
the development PKI in ``./certs`` when no certificate is given.
``check-config`` uses the same two steps, so it accepts exactly what
``serve`` accepts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, TypedDict

from ..core.errors import ConfigError, TLSDError
from ..core.settings import CertificateSettings, ServerSettings, VerifyClient
from ..drivers.dtls.server import DTLSHandler
from ..drivers.tls.server import TLSHandler
from ..service.forward import forward_tcp, forward_udp
from ..service.privileges import Identity, resolve_identity
from .config_file import DEFAULTS, load_config_file
from .dev_pki import DEFAULT_CERT_DIR, ensure_dev_pki
from .sni_option import merge_sni_flags, sni_certificates
from .targets import parse_target

__all__ = [
    "Handlers",
    "check_combinations",
    "handlers_from",
    "identity_from",
    "serve_options",
    "settings_from",
]

logger = logging.getLogger("trio_tls_dtls.cli")


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
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
    if "sni" in flags:  # the flags replace the file's [[sni]] tables
        options["sni"] = merge_sni_flags(flags["sni"])
    return options


def check_combinations(options: dict[str, Any], *, workers: int = 1) -> None:
    """Options that are fine alone but not together; a ConfigError naming them.

    *workers* processes serve metrics and health on P..P+workers-1 each.
    """
    proxy = options["forward_proxy_protocol"]
    if proxy != "off":
        if not (options["forward_tcp"] or options["forward_udp"]):
            raise ConfigError(
                f"--forward-proxy-protocol {proxy} needs --forward-tcp or --forward-udp "
                "(the header goes to a backend)"
            )
        if proxy == "v1" and options["forward_udp"]:
            raise ConfigError(
                "--forward-proxy-protocol v1 cannot describe UDP (--forward-udp): use v2"
            )
    metrics, health = options["metrics_port"], options["health_port"]
    # One metrics port whatever the workers (the supervisor's); health ports H..H+N-1.
    if metrics is not None and health is not None and health <= metrics < health + workers:
        raise ConfigError(
            f"--health-port {health} overlaps --metrics-port {metrics}"
            + (f" (health ports H..H+{workers - 1} with {workers} workers)" if workers > 1 else "")
            + ": /healthz and /readyz are served on the metrics port already"
        )


def settings_from(options: dict[str, Any], *, make_dev_pki: bool) -> tuple[ServerSettings, bool]:
    """ServerSettings from the options; the bool says if the development PKI is used."""
    check_combinations(options)
    if (options["cert"] is None) != (options["key"] is None):
        raise TLSDError("--cert and --key (cert and key) go together: give both or neither")
    ca = options["ca"]
    dev = options["cert"] is None
    if dev:
        if make_dev_pki and _ensure_dev_pki():
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
        sni_certificates=sni_certificates(options["sni"]),
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
        ticket_key_rotation=options["ticket_key_rotation"],
        reload_interval=options["reload_interval"],
        handshake_timeout=options["handshake_timeout"],
        idle_timeout=options["idle_timeout"],
        max_connection_lifetime=options["max_connection_lifetime"],
        max_connections=options["max_connections"],
        per_source_rate=options["per_source_rate"],
        per_source_burst=options["per_source_burst"],
        per_source_connections=options["per_source_connections"],
        per_source_exempt=tuple(options["per_source_exempt"]),
        drain_timeout=options["drain_timeout"],
        drain_delay=options["drain_delay"],
        mtu=options["mtu"],
        max_peers=options["max_peers"],
        cookie_secret_file=options["cookie_secret_file"],
        proxy_protocol=options["proxy_protocol"],
        proxy_trusted=tuple(options["proxy_trusted"]),
    )
    return settings, dev


def _ensure_dev_pki() -> bool:
    try:
        return ensure_dev_pki(DEFAULT_CERT_DIR)
    except ConfigError as exc:
        raise ConfigError(
            f"no --cert/--key given, and no development PKI could be made in "
            f"./{DEFAULT_CERT_DIR}: {exc} (give --cert and --key, or run where "
            f"./{DEFAULT_CERT_DIR} can be made)"
        ) from None


def _read_password(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise TLSDError(f"cannot read key password file {path}: {exc.strerror}") from None


def identity_from(options: dict[str, Any]) -> Identity | None:
    """Who to become after binding (--user/--group), resolved before anything is bound."""
    if options["user"] is None:
        if options["group"] is not None:
            raise ConfigError("--group needs --user")
        return None
    return resolve_identity(options["user"], options["group"])


class Handlers(TypedDict, total=False):
    """Keyword arguments for :class:`~trio_tls_dtls.service.service.Service`."""

    tls_handler: TLSHandler
    dtls_handler: DTLSHandler


def handlers_from(options: dict[str, Any]) -> Handlers:
    """Forwarding handlers where a backend is configured; echo (the default) elsewhere."""
    handlers: Handlers = {}
    proxy = (
        None if options["forward_proxy_protocol"] == "off" else options["forward_proxy_protocol"]
    )
    if options["forward_tcp"]:
        target = parse_target(options["forward_tcp"])
        handlers["tls_handler"] = forward_tcp(target.host, target.port, proxy_protocol=proxy)
    if options["forward_udp"]:
        target = parse_target(options["forward_udp"])
        handlers["dtls_handler"] = forward_udp(target.host, target.port, proxy_protocol=proxy)
    return handlers
