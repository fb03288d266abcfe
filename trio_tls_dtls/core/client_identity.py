"""Which verified client certificates a server admits, and the CRLs that revoke them.

Verifying a client certificate proves that the CA issued it; the rules here
say *which* of the CA's certificates may connect. They run inside OpenSSL's
certificate verification, on the leaf, after the chain, the dates and the
CRL have passed (see :func:`._ossl_callbacks.use_identity_check`), so a
refused client gets a handshake_failure alert and never reaches a handler,
and the access log says why (``handshake_error``).

The rules, kept deliberately small
----------------------------------
``allow_client_subjects``: a certificate whose subject equals one entry.
Entries are RFC 4514 strings, as :attr:`PeerInfo.subject` and the access
log's ``client_cert`` field print them (``CN=device-7,O=Example``); they are
parsed and compared as names, attribute by attribute, so escaping does not
matter but the attributes and their order do. (``openssl x509 -subject``
prints ``O = Example, CN = web`` by default: the same name in the opposite
order, refused as a syntax error rather than silently never matching.)

``allow_client_sans``: a certificate with a subject alternative name that
matches one entry:

* ``client.example.com``: a DNS name, equal (case-insensitively);
* ``*.clients.example.com``: a DNS name exactly one label below;
* ``spiffe://prod.example.org/ns/web/sa/api``: a URI, equal (exactly);
* ``spiffe://prod.example.org/ns/web/*``: a URI that starts with
  ``spiffe://prod.example.org/ns/web/``, so whole path segments only
  (``spiffe://prod.example.org/*`` admits the whole trust domain).

An entry with ``://`` is a URI, anything else a DNS name. A client is
admitted if *any* entry of either list matches; with both lists empty there
are no rules (any certificate the CA issued).

CRLs
----
``crl_file`` holds one or more CRLs (PEM, or one DER). Each must be issued
and signed by a CA in ``ca_file``, and be current, or the file is refused
when the contexts are built (at start and on every reload, which is how a
refreshed CRL is picked up). OpenSSL then checks the client's leaf
certificate against its issuer's CRL (``X509_V_FLAG_CRL_CHECK``): a CA that
issues client certificates needs a CRL in the file, or its clients are
refused ("unable to get certificate CRL").
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .errors import ConfigError
from .pem_files import read_file

__all__ = ["ClientIdentityRules", "load_crls"]

_CRL_PEM_MARKER = b"-----BEGIN X509 CRL-----"


def _subject(entry: object) -> x509.Name:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"allow_client_subjects: {entry!r} is not a subject like CN=name,O=org")
    try:
        # Strict on purpose: "O = Example, CN = web", as openssl prints names
        # by default, lists the attributes in the opposite order.
        return x509.Name.from_rfc4514_string(entry)
    except ValueError:
        raise ConfigError(
            f"allow_client_subjects: cannot parse {entry!r}: expected RFC 4514 "
            "like CN=web,O=Example (as the access log's client_cert shows it, or "
            "openssl x509 -noout -subject -nameopt RFC2253)"
        ) from None


def _san(entry: object) -> str:
    if not isinstance(entry, str) or not entry or entry != entry.strip():
        raise ConfigError(f"allow_client_sans: {entry!r} is not a DNS name or a URI")
    if "://" in entry:
        if "*" in entry[:-1] or (entry.endswith("*") and not entry.endswith("/*")):
            raise ConfigError(
                f"allow_client_sans: {entry!r}: a URI may only end in '/*' (a path prefix)"
            )
        return entry
    name = entry.lower().rstrip(".")
    if "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")) or " " in name:
        raise ConfigError(
            f"allow_client_sans: {entry!r}: a DNS name may only start with '*.' (one label)"
        )
    return name


def _dns_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _uri_matches(pattern: str, uri: str) -> bool:
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        return uri.startswith(prefix) and len(uri) > len(prefix)
    return pattern == uri


def _names_of(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    return dns, list(san.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True)
class ClientIdentityRules:
    """The allow-lists, parsed and checked; call it with a leaf certificate."""

    subjects: tuple[x509.Name, ...]
    sans: tuple[str, ...]

    @classmethod
    def parse(cls, subjects: Sequence[str], sans: Sequence[str]) -> ClientIdentityRules:
        """Rules from the settings' strings; ConfigError names the entry at fault."""
        for what, entries in (("allow_client_subjects", subjects), ("allow_client_sans", sans)):
            if isinstance(entries, str):
                raise ConfigError(f"{what} must be a list, not one string")
        return cls(tuple(_subject(s) for s in subjects), tuple(_san(s) for s in sans))

    def __bool__(self) -> bool:
        return bool(self.subjects or self.sans)

    def __call__(self, cert: x509.Certificate) -> str | None:
        """None if *cert* is admitted, else the refusal reason for the log."""
        if cert.subject in self.subjects:
            return None
        dns, uris = _names_of(cert)
        for pattern in self.sans:
            if "://" in pattern:
                if any(_uri_matches(pattern, uri) for uri in uris):
                    return None
            elif any(_dns_matches(pattern, name) for name in dns):
                return None
        names = [f"DNS:{n}" for n in dns] + [f"URI:{u}" for u in uris]
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return (
            f"client certificate not allowed: subject {cert.subject.rfc4514_string()!r}, "
            f"SANs [{shown}] match no allow_client_subjects/allow_client_sans entry"
        )


def _parse_crls(data: bytes, path: Path) -> list[x509.CertificateRevocationList]:
    try:
        if _CRL_PEM_MARKER not in data:
            return [x509.load_der_x509_crl(data)]
        blocks = data.split(_CRL_PEM_MARKER)[1:]
        return [x509.load_pem_x509_crl(_CRL_PEM_MARKER + block) for block in blocks]
    except ValueError:
        raise ConfigError(f"crl_file {path} holds no valid CRL (PEM or DER)") from None


def _check_crl(
    crl: x509.CertificateRevocationList,
    cas: Sequence[x509.Certificate],
    path: Path,
    now: datetime.datetime,
) -> None:
    issuer = crl.issuer.rfc4514_string()
    signers = [ca for ca in cas if ca.subject == crl.issuer]
    if not signers:
        raise ConfigError(f"crl_file {path}: the CRL of {issuer!r} is from no CA in ca_file")
    if not any(crl.is_signature_valid(ca.public_key()) for ca in signers):  # type: ignore[arg-type]
        raise ConfigError(f"crl_file {path}: the CRL of {issuer!r} is not signed by that CA")
    if crl.last_update_utc > now:
        raise ConfigError(
            f"crl_file {path}: the CRL of {issuer!r} is not valid until "
            f"{crl.last_update_utc:%Y-%m-%d %H:%M} UTC"
        )
    if crl.next_update_utc is not None and crl.next_update_utc < now:
        raise ConfigError(
            f"crl_file {path}: the CRL of {issuer!r} expired on "
            f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC (every client would be refused); "
            "fetch a fresh one"
        )


def load_crls(
    path: Path, cas: Sequence[x509.Certificate], *, now: datetime.datetime | None = None
) -> list[x509.CertificateRevocationList]:
    """The CRLs in *path*, each checked against *cas* (the ca_file) and the time *now*."""
    crls = _parse_crls(read_file(path, "crl_file"), path)
    moment = now or datetime.datetime.now(datetime.UTC)
    for crl in crls:
        _check_crl(crl, cas, path, moment)
    return crls
