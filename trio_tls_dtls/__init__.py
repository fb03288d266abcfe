"""trio-tls-dtls: Trio-native TLS and DTLS over OpenSSL memory BIOs.

The public API is re-exported here; everything is typed (PEP 561).

The layers are the sub-packages, and dependencies point down only
(``cli`` -> ``service`` -> ``drivers`` -> ``core``; import-linter checks it):

* :mod:`trio_tls_dtls.core`: sans-IO. Engines, DTLS records, cookie and gate,
  settings, contexts. Never imports trio, sockets, threads or metrics.
* :mod:`trio_tls_dtls.drivers`: Trio. Streams, channels, listeners, clients,
  the crypto offload.
* :mod:`trio_tls_dtls.service`: the supervised service, signals and drain,
  workers, handlers, metrics, the connection log.
* :mod:`trio_tls_dtls.cli`: ``trio-tlsd``.

Names are re-exported lazily (PEP 562): ``import trio_tls_dtls.core.engine``
loads no trio, and ``from trio_tls_dtls import TLSEngine`` loads only what
that name needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.dtls_cookie import CookieSecrets
    from .core.engine import DTLSEngine, TLSEngine
    from .core.errors import (
        ConfigError,
        CookieError,
        DatagramTooLargeError,
        HandshakeError,
        ListenError,
        RecordParseError,
        TLSDError,
        TLSError,
    )
    from .core.peer_info import PeerInfo
    from .core.settings import (
        CertificateSettings,
        ClientSettings,
        OffloadSettings,
        ServerSettings,
        VerifyClient,
    )
    from .drivers.dtls.channel import DTLSChannel
    from .drivers.dtls.client import open_dtls_channel
    from .drivers.dtls.server import (
        DTLSHandler,
        DTLSServer,
        DTLSServerStats,
        dtls_echo_handler,
        serve_dtls,
    )
    from .drivers.offload import CryptoOffload
    from .drivers.tls.client import open_tls_stream
    from .drivers.tls.server import TLSHandler, TLSServer, TLSServerStats, echo_handler, serve_tls
    from .drivers.tls.stream import TLSStream
    from .service.forward import forward_tcp, forward_udp
    from .service.health import serve_health
    from .service.metrics import serve_metrics
    from .service.service import Service, serve

__version__ = "0.1.0"

# Public name -> the module (below this package) that defines it.
_EXPORTS: dict[str, str] = {
    "CertificateSettings": "core.settings",
    "ClientSettings": "core.settings",
    "ConfigError": "core.errors",
    "CookieError": "core.errors",
    "CookieSecrets": "core.dtls_cookie",
    "CryptoOffload": "drivers.offload",
    "DatagramTooLargeError": "core.errors",
    "dtls_echo_handler": "drivers.dtls.server",
    "DTLSChannel": "drivers.dtls.channel",
    "DTLSEngine": "core.engine",
    "DTLSHandler": "drivers.dtls.server",
    "DTLSServer": "drivers.dtls.server",
    "DTLSServerStats": "drivers.dtls.server",
    "echo_handler": "drivers.tls.server",
    "forward_tcp": "service.forward",
    "forward_udp": "service.forward",
    "HandshakeError": "core.errors",
    "ListenError": "core.errors",
    "OffloadSettings": "core.settings",
    "open_dtls_channel": "drivers.dtls.client",
    "open_tls_stream": "drivers.tls.client",
    "PeerInfo": "core.peer_info",
    "RecordParseError": "core.errors",
    "serve": "service.service",
    "serve_dtls": "drivers.dtls.server",
    "serve_health": "service.health",
    "serve_metrics": "service.metrics",
    "serve_tls": "drivers.tls.server",
    "ServerSettings": "core.settings",
    "Service": "service.service",
    "TLSDError": "core.errors",
    "TLSEngine": "core.engine",
    "TLSError": "core.errors",
    "TLSHandler": "drivers.tls.server",
    "TLSServer": "drivers.tls.server",
    "TLSServerStats": "drivers.tls.server",
    "TLSStream": "drivers.tls.stream",
    "VerifyClient": "core.settings",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CertificateSettings",
    "ClientSettings",
    "ConfigError",
    "CookieError",
    "CookieSecrets",
    "CryptoOffload",
    "DTLSChannel",
    "DTLSEngine",
    "DTLSHandler",
    "DTLSServer",
    "DTLSServerStats",
    "DatagramTooLargeError",
    "HandshakeError",
    "ListenError",
    "OffloadSettings",
    "PeerInfo",
    "RecordParseError",
    "ServerSettings",
    "Service",
    "TLSDError",
    "TLSEngine",
    "TLSError",
    "TLSHandler",
    "TLSServer",
    "TLSServerStats",
    "TLSStream",
    "VerifyClient",
    "__version__",
    "dtls_echo_handler",
    "echo_handler",
    "forward_tcp",
    "forward_udp",
    "open_dtls_channel",
    "open_tls_stream",
    "serve",
    "serve_dtls",
    "serve_health",
    "serve_metrics",
    "serve_tls",
]
