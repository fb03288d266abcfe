"""trio-tls-dtls: Trio-native TLS and DTLS over OpenSSL memory BIOs.

The public API is re-exported here; everything is typed (PEP 561).
"""

from __future__ import annotations

from .config import (
    CertificateSettings,
    ClientSettings,
    OffloadSettings,
    ServerSettings,
    VerifyClient,
)
from .dtls.channel import DTLSChannel
from .dtls.client import open_dtls_channel
from .dtls.cookie import CookieSecrets
from .dtls.server import DTLSHandler, DTLSServer, DTLSServerStats, dtls_echo_handler, serve_dtls
from .engine import DTLSEngine, TLSEngine
from .errors import (
    ConfigError,
    CookieError,
    DatagramTooLargeError,
    HandshakeError,
    ListenError,
    RecordParseError,
    TLSDError,
    TLSError,
)
from .forward import forward_tcp, forward_udp
from .info import PeerInfo
from .metrics import serve_metrics
from .offload import CryptoOffload
from .service import Service, serve
from .tls.client import open_tls_stream
from .tls.server import TLSHandler, TLSServer, TLSServerStats, echo_handler, serve_tls
from .tls.stream import TLSStream

__version__ = "0.1.0"

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
    "serve_metrics",
    "serve_tls",
]
