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
from .engine import TLSEngine
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
from .info import PeerInfo
from .offload import CryptoOffload
from .tls.client import open_tls_stream
from .tls.server import TLSHandler, TLSServer, TLSServerStats, echo_handler, serve_tls
from .tls.stream import TLSStream

__version__ = "0.1.0"

__all__ = [
    "CertificateSettings",
    "ClientSettings",
    "ConfigError",
    "CookieError",
    "CryptoOffload",
    "DatagramTooLargeError",
    "HandshakeError",
    "ListenError",
    "OffloadSettings",
    "PeerInfo",
    "RecordParseError",
    "ServerSettings",
    "TLSDError",
    "TLSEngine",
    "TLSError",
    "TLSHandler",
    "TLSServer",
    "TLSServerStats",
    "TLSStream",
    "VerifyClient",
    "__version__",
    "echo_handler",
    "open_tls_stream",
    "serve_tls",
]
