"""``trio-tlsd serve``: one process, or ``--workers N`` under a supervisor.

Everything before the first byte is served happens here, in the order that
keeps errors one line long: options (defaults, ``--config``, flags), the
``--user`` lookup, the settings and, for a single process, the SSL contexts
and cookie secret, so a bad file fails before any port is bound. What a
serving process does from then on (bind, drop root, serve, drain on a
signal, the summary line and exit status) is the service layer's
:func:`~trio_tls_dtls.service.serving_process.serve_process`, shared with
every worker, which also binds and serves the metrics and health endpoints
before anything is served (so a port in use is one line, exit status 2,
like any other bad input); this module adds the CLI's banner and
``openssl s_client`` hints through its ``on_serving`` hook.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from typing import Any

import trio

from ..core.errors import ConfigError
from ..core.peer_info import format_address
from ..core.settings import ServerSettings, VerifyClient
from ..service.log_format import make_formatter, status_line
from ..service.privileges import drop_privileges
from ..service.service import Service
from ..service.serving_process import OperatorPorts, ProcessHooks, Serving, serve_process
from ..service.workers import serve_workers, worker_count
from .dev_pki import DEFAULT_CERT_DIR
from .serve_settings import (
    check_combinations,
    handlers_from,
    identity_from,
    serve_options,
    settings_from,
)

__all__ = ["connect_hint", "run"]

logger = logging.getLogger("trio_tls_dtls.cli")


def run(args: argparse.Namespace) -> int:
    options = serve_options(args)
    _use_log_format(options["log_format"])
    identity = identity_from(options)  # an unknown user fails before binding
    settings, dev = settings_from(options, make_dev_pki=True)
    count = worker_count(options["workers"])
    hooks = ProcessHooks(
        # Drop root (--user) right after binding, before any peer is accepted.
        after_bind=None if identity is None else partial(drop_privileges, identity),
        on_serving=partial(_announce, options, dev),
        log=logger,
    )
    if count > 1:
        return _run_workers(options, settings, count, hooks)
    # Contexts and the cookie secret are built here: bad files fail before binding.
    protocols = options["protocols"]
    service = Service(
        settings, tls="tls" in protocols, dtls="dtls" in protocols, **handlers_from(options)
    )
    run_process = partial(
        serve_process,
        service,
        options["port"],
        options["host"],
        hooks=hooks,
        operator=_operator_ports(options),
    )
    return trio.run(run_process)


def _operator_ports(options: dict[str, Any]) -> OperatorPorts:
    return OperatorPorts(
        metrics_port=options["metrics_port"],
        metrics_host=options["metrics_host"],
        health_port=options["health_port"],
        health_host=options["health_host"],
    )


def _run_workers(
    options: dict[str, Any], settings: ServerSettings, count: int, hooks: ProcessHooks
) -> int:
    if options["port"] == 0:
        raise ConfigError("--workers needs a fixed --port (with port 0 each would get its own)")
    # --metrics-port is the supervisor's one endpoint; --health-port is per worker.
    first = options["health_port"]
    if first is not None and first + count - 1 > 65535:
        raise ConfigError(f"--health-port {first}: no room for ports P..P+{count - 1}")
    check_combinations(options, workers=count)
    # Contexts and the cookie secret are built in the supervisor, before any
    # fork: every worker gets the same ticket keys and cookie secret.
    return serve_workers(
        settings,
        options["port"],
        count=count,
        host=options["host"],
        tls="tls" in options["protocols"],
        dtls="dtls" in options["protocols"],
        hooks=hooks,
        operator=_operator_ports(options),
        **handlers_from(options),
    )


async def _announce(options: dict[str, Any], dev: bool, serving: Serving) -> None:
    """The on_serving hook: metrics and health, then the banner and how to connect."""
    service = serving.service
    # With workers, the supervisor says where its one metrics endpoint is.
    if serving.metrics_address is not None and serving.worker is None:
        where = format_address(serving.metrics_address)
        logger.info("metrics at http://%s/metrics, health at /healthz and /readyz", where)
    if serving.health_address is not None:
        where = format_address(serving.health_address)
        logger.info("health at http://%s/healthz and /readyz", where)
    print(
        status_line(f"{serving.who}: serving {_what(options, service)}: {service.describe()}"),
        file=sys.stderr,
    )
    for sni in service.settings.sni_certificates:
        logger.info("SNI: %s get %s", ", ".join(sni.server_names), sni.cert_file)
    if service.dtls is not None:
        logger.info("DTLS cookie secret fingerprint %s", service.dtls.cookies.fingerprint)
    if service.tls is not None and service.settings.proxy_protocol:
        trusted = ", ".join(service.settings.proxy_trusted)
        logger.info("TLS expects a PROXY protocol header, trusted from: %s", trusted)
    if not serving.worker:  # once: by a single process, or by worker 0 of several
        for is_dtls, server in ((False, service.tls), (True, service.dtls)):
            if server is not None:
                hint = connect_hint(service.port, service.settings, dev, dtls=is_dtls)
                print(status_line(f"connect with: {hint}"), file=sys.stderr)
    sys.stderr.flush()


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


def connect_hint(port: int, settings: ServerSettings, dev: bool, *, dtls: bool = False) -> str:
    """How to connect to this server: an ``openssl s_client`` command line, as a rule.

    With client certificates asked for, the command passes one: the
    development PKI's, or placeholders for yours. With the PROXY protocol on,
    a direct TLS client is refused (it sends no header), so the TLS hint
    says to go through the load balancer instead.
    """
    if settings.proxy_protocol and not dtls:
        return (
            "your load balancer, not this port: TLS here must start with a PROXY protocol "
            "header, which openssl s_client does not send (see docs/howto/proxy-protocol)"
        )
    parts = ["openssl s_client"]
    if dtls:
        parts.append("-dtls1_2")
    parts.append(f"-connect localhost:{port} -servername localhost")
    if dev:
        parts.append(f"-CAfile {DEFAULT_CERT_DIR / 'ca.pem'} -verify_return_error")
    if settings.verify_client is not VerifyClient.NONE:
        dev_ca = dev and settings.ca_file == DEFAULT_CERT_DIR / "ca.pem"
        cert, key = (
            (DEFAULT_CERT_DIR / "client.pem", DEFAULT_CERT_DIR / "client.key")
            if dev_ca
            else ("CLIENT.pem", "CLIENT.key")  # yours, signed by the --ca file
        )
        parts.append(f"-cert {cert} -key {key}")
    return " ".join(parts)


def _use_log_format(kind: str) -> None:
    formatter = make_formatter(kind)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
