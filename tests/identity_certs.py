"""Client certificates with subject alternative names, and CRLs, from a test PKI's CA.

The development PKI issues one client certificate with no SANs; the identity
rule tests need more: DNS and URI (SPIFFE) names, and revoked certificates.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import PKIFiles
from trio_tls_dtls.core.settings import CertificateSettings

HOUR = datetime.timedelta(hours=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def issue_client_cert(
    pki: PKIFiles, name: str, *, dns: Sequence[str] = (), uris: Sequence[str] = ()
) -> tuple[x509.Certificate, CertificateSettings]:
    """A client certificate ``CN=name,O=test clients`` with these SANs, written to disk."""
    ca = pki.pki.ca
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test clients"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - HOUR)
        .not_valid_after(_now() + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = pki.dir / f"client-{name}.pem", pki.dir / f"client-{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert, CertificateSettings(cert_path, key_path)


def write_crl(
    pki: PKIFiles,
    path: Path,
    revoked: Sequence[x509.Certificate] = (),
    *,
    next_update: datetime.datetime | None = None,
    der: bool = False,
) -> Path:
    """A CRL from *pki*'s CA revoking *revoked*, written to *path* (PEM unless *der*)."""
    ca = pki.pki.ca
    next_update = next_update or _now() + 24 * HOUR
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(min(_now(), next_update) - HOUR)
        .next_update(next_update)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(_now() - HOUR)
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    path.write_bytes(crl.public_bytes(encoding))
    return path
