"""A development PKI made with ``cryptography``: one CA, a server and a client.

``trio-tlsd certs`` and ``trio-tlsd serve`` (on first run) write it to disk,
the CA's key included (``ca.key``, mode 0600), so that ``trio-tlsd certs
issue`` can sign more certificates from it later (:func:`load_dev_ca`,
:func:`issue_certificate`): SNI names, more clients. The test suite makes a
fresh PKI per run in memory. None of it is meant for production: the CA key
sits next to the certificates it signs, and anyone who can read it can mint
certificates this CA's clients and servers trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.errors import ConfigError, TLSDError

__all__ = [
    "CA_KEY_FILE",
    "DEFAULT_CERT_DIR",
    "DEFAULT_SERVER_NAMES",
    "DEV_PKI_FILES",
    "DevPKI",
    "Issued",
    "KeyType",
    "PrivateKey",
    "ensure_dev_pki",
    "generate_key",
    "issue_certificate",
    "load_dev_ca",
    "make_dev_pki",
    "write_dev_pki",
    "write_issued",
]

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

# Where `certs` writes without --dir and `serve` without --cert looks (and
# makes one on first run): relative to the working directory.
DEFAULT_CERT_DIR = Path("certs")

# Certificates are back-dated a little so that a peer whose clock runs
# slightly behind still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """Make an ECDSA P-256 key (the default, fast) or an RSA-2048 key."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: expected 'ec' or 'rsa'")


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, and PEM encodings of both."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def encrypted_key_pem(self, passphrase: bytes) -> bytes:
        """The private key as PEM encrypted with *passphrase*."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )


@dataclass(frozen=True)
class DevPKI:
    """A development CA and the server and client certificates it signed."""

    ca: Issued
    server: Issued
    client: Issued

    def issue_server(
        self,
        names: Sequence[str] = DEFAULT_SERVER_NAMES,
        *,
        key_type: KeyType = "ec",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """Sign another server certificate with this CA (for SNI, reloads, tests)."""
        return _issue(
            self.ca,
            names[0],
            names,
            server=True,
            key_type=key_type,
            not_before=not_before,
            not_after=not_after,
        )

    def issue_client(self, common_name: str, *, key_type: KeyType = "ec") -> Issued:
        """Sign another client certificate with this CA."""
        return _issue(self.ca, common_name, (), server=False, key_type=key_type)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trio-tlsd development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(name: str) -> x509.GeneralName:
    if "://" in name:  # spiffe://trust-domain/workload and other URIs
        return x509.UniformResourceIdentifier(name)
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _make_ca(common_name: str, key_type: KeyType) -> Issued:
    key = generate_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _issue(
    ca: Issued,
    common_name: str,
    names: Sequence[str],
    *,
    server: bool,
    key_type: KeyType,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    key = generate_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _BACKDATE)
        .not_valid_after(not_after or now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def make_dev_pki(
    *,
    key_type: KeyType = "ec",
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    ca_name: str = "trio-tlsd development CA",
    client_name: str = "trio-tlsd client",
) -> DevPKI:
    """Make a CA, a server certificate for *server_names* and a client certificate."""
    if not server_names:
        raise ValueError("a server certificate needs at least one name")
    ca = _make_ca(ca_name, key_type)
    server = _issue(ca, server_names[0], server_names, server=True, key_type=key_type)
    client = _issue(ca, client_name, (), server=False, key_type=key_type)
    return DevPKI(ca=ca, server=server, client=client)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    # Create private keys with mode 0600 from the start rather than chmod
    # afterwards, so there is no moment at which they are world-readable.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)


def write_dev_pki(directory: str | os.PathLike[str], pki: DevPKI) -> dict[str, Path]:
    """Write *pki* as ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``client.pem``,
    ``client.key``.

    Returns the paths written, keyed by those file names; a folder or file
    that cannot be made is a one-line
    :class:`~trio_tls_dtls.core.errors.ConfigError`. Keys are mode 0600.
    The service never reads ``ca.key``; ``trio-tlsd certs issue`` does.
    """
    folder = _make_folder(Path(directory))
    files = {
        "ca.pem": (pki.ca.cert_pem, False),
        CA_KEY_FILE: (pki.ca.key_pem, True),
        "server.pem": (pki.server.cert_pem, False),
        "server.key": (pki.server.key_pem, True),
        "client.pem": (pki.client.cert_pem, False),
        "client.key": (pki.client.key_pem, True),
    }
    written: dict[str, Path] = {}
    for name, (data, private) in files.items():
        path = folder / name
        try:
            _write(path, data, private=private)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        written[name] = path
    return written


def _make_folder(folder: Path) -> Path:
    """*folder*, made (with its parents) if missing; a one-line ConfigError if it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = os.path.abspath(folder)
        raise ConfigError(f"cannot create the folder {where}: {exc.strerror or exc}") from None
    return folder


DEV_PKI_FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
"""What ``serve`` needs of a development PKI (``ca.key``, kept since issue 16, is optional)."""

CA_KEY_FILE = "ca.key"


def ensure_dev_pki(directory: str | os.PathLike[str], *, key_type: KeyType = "ec") -> bool:
    """Make the development PKI in *directory* unless its server files exist.

    Returns True if it was created. Refuses (ValueError) to mix a new CA
    into a folder that already holds some, but not all, of the files.
    """
    folder = Path(directory)
    present = [name for name in DEV_PKI_FILES if (folder / name).exists()]
    if len(present) == len(DEV_PKI_FILES):
        return False
    if present:
        raise ValueError(
            f"{folder} holds only some of the development PKI ({', '.join(present)}); "
            f"run 'trio-tlsd certs --dir {folder} --force' to remake it"
        )
    write_dev_pki(folder, make_dev_pki(key_type=key_type))
    return True


def load_dev_ca(directory: str | os.PathLike[str]) -> Issued:
    """The development CA in *directory* (``ca.pem`` and ``ca.key``), to issue more from.

    Raises TLSDError, saying what to do, when either file is missing, unreadable,
    or the key is not the certificate's.
    """
    folder = Path(directory)
    cert_path, key_path = folder / "ca.pem", folder / CA_KEY_FILE
    if not cert_path.exists():
        raise TLSDError(
            f"{cert_path} not found: make a development CA first with "
            f"'trio-tlsd certs --dir {folder}'"
        )
    if not key_path.exists():
        raise TLSDError(
            f"{key_path} not found: issuing needs the development CA's key (a folder "
            "made by an older trio-tlsd has none); "
            f"'trio-tlsd certs --dir {folder} --force' makes a new CA and replaces every "
            "certificate in the folder"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSDError(f"cannot read CA certificate {cert_path}: {_reason(exc)}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TLSDError(f"cannot read CA key {key_path}: {_reason(exc)}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or _spki(
        key.public_key()
    ) != _spki(cert.public_key()):
        raise TLSDError(f"CA key {key_path} does not match CA certificate {cert_path}")
    return Issued(cert, key)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split("\n")[0]


def _spki(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issue_certificate(
    ca: Issued,
    name: str,
    *,
    client: bool = False,
    sans: Sequence[str] = (),
    key_type: KeyType = "ec",
) -> Issued:
    """A certificate for *name* signed by *ca*.

    A server certificate names *name* and *sans* (DNS names, IP addresses,
    URIs) in its subjectAltName; a client certificate has *name* as its
    common name and *sans* (e.g. a SPIFFE ID) as its subjectAltName.
    """
    names = list(sans) if client else list(dict.fromkeys([name, *sans]))
    return _issue(ca, name, names, server=not client, key_type=key_type)


def write_issued(
    directory: str | os.PathLike[str], stem: str, issued: Issued, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write *issued* as ``STEM.pem`` and ``STEM.key`` (0600); refuse to overwrite unless told."""
    folder = Path(directory)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not overwrite:
        raise TLSDError(f"{' and '.join(existing)} already exist; use --force to overwrite")
    for path, data, private in (
        (key_path, issued.key_pem, True),
        (cert_path, issued.cert_pem, False),
    ):
        try:
            _write(path, data, private=private)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return cert_path, key_path
