"""trio-tls-dtls: Trio-native TLS and DTLS over OpenSSL memory BIOs."""

from __future__ import annotations

from .errors import (
    ConfigError,
    CookieError,
    DatagramTooLargeError,
    HandshakeError,
    RecordParseError,
    TLSDError,
    TLSError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CookieError",
    "DatagramTooLargeError",
    "HandshakeError",
    "RecordParseError",
    "TLSDError",
    "TLSError",
    "__version__",
]
