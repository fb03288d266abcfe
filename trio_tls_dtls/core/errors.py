"""One small exception hierarchy for the whole package.

Every error we raise on purpose derives from :class:`TLSDError`, so an
application can catch "anything trio-tls-dtls refused" in one place. The
sans-IO core raises these too, which is why this module imports nothing from
trio: the drivers translate into trio's stream exceptions where the
``trio.abc`` contracts require it, and keep ours as the ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CookieError",
    "DatagramTooLargeError",
    "HandshakeError",
    "ListenError",
    "RecordParseError",
    "TLSDError",
    "TLSError",
]


class TLSDError(Exception):
    """Base class of every error raised on purpose by trio-tls-dtls."""


class ConfigError(TLSDError):
    """A setting, flag or file is missing, malformed or impossible.

    The message names the setting or the path and says what is wrong, so the
    CLI can print it as one line.
    """


class ListenError(TLSDError):
    """A listener could not bind: the port is in use, or the address is not ours.

    ``errno`` is the operating system's error number, when there was one.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class TLSError(TLSDError):
    """The TLS or DTLS protocol failed: a bad record, an alert, truncation.

    ``reason`` is OpenSSL's reason text where OpenSSL gave one (for example
    ``"certificate verify failed"``), otherwise our own short description.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class HandshakeError(TLSError):
    """The handshake failed or did not finish before its deadline."""


class DatagramTooLargeError(TLSDError, ValueError):
    """An application datagram does not fit in one DTLS record at the current MTU."""


class RecordParseError(TLSDError, ValueError):
    """Bytes that are not a well-formed DTLS record or ClientHello."""


class CookieError(TLSDError):
    """A DTLS cookie secret could not be loaded or used."""
