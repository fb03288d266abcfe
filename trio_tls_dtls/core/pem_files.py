"""Read certificates and keys from disk with errors a person can act on.

OpenSSL's own loaders fail with messages like ``('PEM routines', '',
'no start line')``. We read and parse with ``cryptography`` first, so that a
missing file names its path, an expired certificate says when it expired, and
a key that belongs to another certificate says so.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .errors import ConfigError

__all__ = ["LoadedCertificate", "load_ca_file", "load_certificate"]

logger = logging.getLogger(__name__)


def read_file(path: Path, what: str) -> bytes:
    """The bytes of *path*, or a ConfigError naming *what* and the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _parse_certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{what} {path} holds no valid PEM certificate") from None
    if not certs:  # pragma: no cover - cryptography raises instead today
        raise ConfigError(f"{what} {path} holds no PEM certificate")
    return certs


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"certificate {path} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def _warn_if_exposed(path: Path) -> None:
    try:
        info = path.stat()
    except OSError:  # pragma: no cover - we just read it
        return
    mode = info.st_mode
    # Group access is fine when the group is one of ours: a Kubernetes Secret
    # mounted 0440 with the pod's fsGroup is readable by this process alone.
    own_group = info.st_gid == os.getegid() or info.st_gid in os.getgroups()
    exposed = stat.S_IRWXO | (0 if own_group else stat.S_IRWXG)
    if mode & exposed:
        logger.warning(
            "private key %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


def _load_key(path: Path, password: bytes | None) -> PrivateKeyTypes:
    data = read_file(path, "key file")
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise ConfigError(f"key file {path} is encrypted: give its passphrase") from None
        raise ConfigError(f"key file {path} is not encrypted, but a passphrase was given") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise ConfigError(f"could not decrypt key file {path}: wrong passphrase") from None
        raise ConfigError(f"key file {path} holds no valid PEM private key") from None
    _warn_if_exposed(path)
    return key


def _public_der(cert_or_key: x509.Certificate | PrivateKeyTypes) -> bytes:
    public = cert_or_key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class LoadedCertificate:
    """A certificate chain (leaf first) and the leaf's private key, checked."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_certificate(
    cert_file: Path, key_file: Path, password: bytes | None = None
) -> LoadedCertificate:
    """Load and check a chain and its key: readable, parseable, in date, matching."""
    chain = _parse_certificates(
        read_file(cert_file, "certificate file"), cert_file, "certificate file"
    )
    _check_validity(chain[0], cert_file)
    key = _load_key(key_file, password)
    if _public_der(key) != _public_der(chain[0]):
        raise ConfigError(f"key file {key_file} does not match certificate {cert_file}")
    return LoadedCertificate(tuple(chain), key)


def load_ca_file(ca_file: Path) -> list[x509.Certificate]:
    """The CA certificates in *ca_file* (checked to exist and parse)."""
    return _parse_certificates(read_file(ca_file, "CA file"), ca_file, "CA file")
