"""The flags of ``trio-tlsd serve``.

They have no argparse defaults: a flag that is not given must not override
the ``--config`` file. The defaults live in
:data:`trio_tls_dtls.cli.config_file.DEFAULTS`, and
:func:`trio_tls_dtls.cli.serve_settings.serve_options` layers defaults,
file and flags in that order.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.settings import DEFAULT_DTLS_MTU, VerifyClient
from . import flag_values as values
from . import serve_command
from .config_file import DEFAULT_PORT
from .sni_option import parse_sni_flag

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    # No argparse defaults (see the module docstring).
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
    p.add_argument("--port", type=values.port, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--cert", type=Path, help="certificate chain file (PEM)")
    p.add_argument("--key", type=Path, help="private key file (PEM)")
    p.add_argument("--key-password-file", type=Path, help="file holding the key's passphrase")
    p.add_argument(
        "--ocsp-staple",
        type=Path,
        metavar="FILE",
        help="DER OCSP response to staple (re-read on reload; see docs/howto/ocsp)",
    )
    p.add_argument(
        "--reload-interval",
        type=values.non_negative_seconds,
        metavar="S",
        help="look at the certificate, key, CA and OCSP files every S seconds and reload "
        "when they change (default: 10; 0 = only on SIGHUP)",
    )
    p.add_argument(
        "--sni",
        type=parse_sni_flag,
        action="append",
        metavar="NAME=CERT,KEY",
        help="serve this certificate to clients asking for server NAME (*.example.com "
        "matches one label); repeatable; others get --cert",
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
    p.add_argument(
        "--ticket-key-rotation",
        type=values.non_negative_seconds,
        metavar="S",
        help="new session-ticket keys every S seconds; the previous ones still resume "
        "(default: 86400; 0 = never)",
    )
    p.add_argument("--handshake-timeout", type=values.seconds, metavar="S", help="default: 10")
    p.add_argument(
        "--idle-timeout",
        type=values.optional_seconds,
        metavar="S",
        help="close after S without application data either way (default: 300; 0 = none)",
    )
    p.add_argument(
        "--max-connection-lifetime",
        type=values.optional_seconds,
        metavar="S",
        help="close any connection / DTLS peer S after it began (default: none)",
    )
    p.add_argument("--max-connections", type=values.positive_int, metavar="N", help="default: 1024")
    p.add_argument(
        "--per-source-rate",
        type=values.rate,
        metavar="R",
        help="new handshakes/s per source (IPv4 address, IPv6 /64); default: 50, 0 = off",
    )
    p.add_argument(
        "--per-source-burst",
        type=values.positive_int,
        metavar="N",
        help="handshakes a quiet source may start at once (default: 100)",
    )
    p.add_argument(
        "--per-source-connections",
        type=values.count_or_off,
        metavar="N",
        help="concurrent TLS connections / DTLS peers per source (default: 256; 0 = off)",
    )
    p.add_argument(
        "--per-source-exempt",
        type=values.network_list,
        metavar="CIDR,...",
        help='networks not limited (default: 127.0.0.0/8,::1/128; "none" = limit all)',
    )
    p.add_argument(
        "--drain-timeout",
        type=values.seconds,
        metavar="S",
        help="on SIGINT/SIGTERM, how long open connections get to finish (default: 10)",
    )
    p.add_argument(
        "--drain-delay",
        type=values.non_negative_seconds,
        metavar="S",
        help="on SIGINT/SIGTERM, keep accepting this long with /readyz failing, "
        "then drain (default: 0)",
    )
    p.add_argument(
        "--forward-tcp",
        type=values.target_text,
        metavar="HOST:PORT",
        help="forward TLS connections' plaintext to this TCP backend (default: echo)",
    )
    p.add_argument(
        "--forward-udp",
        type=values.target_text,
        metavar="HOST:PORT",
        help="forward each DTLS peer's datagrams to this UDP backend (default: echo)",
    )
    p.add_argument(
        "--forward-proxy-protocol",
        choices=["off", "v1", "v2"],
        help="tell the backend who the client is: a PROXY header before the TCP stream "
        "(v1 or v2), on each UDP datagram (v2 only); v2 carries the TLS facts (default: off)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default: text)",
    )
    p.add_argument(
        "--metrics-port",
        type=values.metrics_port,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics (default: off)",
    )
    p.add_argument("--metrics-host", help="address for --metrics-port (default: 127.0.0.1)")
    p.add_argument(
        "--health-port",
        type=values.health_port,
        metavar="P",
        help="serve /healthz and /readyz at http://HOST:P (default: off; "
        "always on the --metrics-port too)",
    )
    p.add_argument("--health-host", help="address for --health-port (default: 127.0.0.1)")
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
        type=values.workers,
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
        type=values.network_list,
        action="extend",
        metavar="CIDR[,CIDR...]",
        help="who may send that header (repeatable; default: 127.0.0.1/32,::1/128)",
    )
    dtls = p.add_argument_group("DTLS")
    dtls.add_argument(
        "--mtu",
        type=values.mtu,
        metavar="BYTES",
        help=f"largest datagram sent (default: {DEFAULT_DTLS_MTU})",
    )
    dtls.add_argument("--max-peers", type=values.positive_int, metavar="N", help="default: 1024")
    dtls.add_argument(
        "--cookie-secret-file",
        type=Path,
        metavar="FILE",
        help="cookie master secret shared by several servers (see: trio-tlsd cookie-secret)",
    )
    p.set_defaults(run=serve_command.run)
