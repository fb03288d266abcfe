"""OCSP stapling: the server's staple file, and the client's check of a staple.

Sans-IO like the engine: no trio, no sockets. The server side reads a DER
OCSP response that the operator fetches and refreshes (``openssl ocsp ...
-respout staple.der`` from cron, then SIGHUP) and hands the same bytes to
every handshake that asks for them. The file is read when the contexts are
built, so a reload picks up a new one, and a bad file is refused then, with
the old contexts (and their staple) kept.

The client side asks for a staple (``Connection.request_ocsp``) and checks
what it gets inside OpenSSL's status callback, which runs after the server's
chain has been verified: the response must parse, say SUCCESSFUL, be signed
by the certificate's issuer (directly or through a delegated responder it
issued), cover the server certificate's serial with status GOOD, and be
current. The verdict is kept per connection (:func:`status_of`) so that
:class:`~trio_tls_dtls.core.peer_info.PeerInfo` can report it and a refused handshake
can say why. The callback never raises: pyOpenSSL would park the exception
on the shared Context, where another connection's handshake could pick it up.
"""

from __future__ import annotations

import datetime
import enum
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from . import _ossl
from .errors import ConfigError
from .pem_files import read_file

__all__ = [
    "OCSPChecker",
    "OCSPState",
    "OCSPStatus",
    "check_staple",
    "load_staple",
    "status_of",
]

logger = logging.getLogger(__name__)

# How far a responder's clock may run ahead of ours (this_update in the future).
CLOCK_SKEW = datetime.timedelta(minutes=5)


class OCSPState(enum.StrEnum):
    """What a client made of the server's staple."""

    GOOD = "good"
    """A current, correctly signed response saying the certificate is not revoked."""
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    """The responder does not know the certificate."""
    MISSING = "missing"
    """The server sent no staple."""
    INVALID = "invalid"
    """A staple that does not parse, is signed by the wrong key, is stale or is not ours."""
    RESUMED = "resumed"
    """A resumed session: no certificate and no staple were sent, nothing to check."""


@dataclass(frozen=True)
class OCSPStatus:
    """The verdict on one handshake's staple; ``detail`` says why, in words."""

    state: OCSPState
    detail: str
    this_update: datetime.datetime | None = None
    next_update: datetime.datetime | None = None
    refused: bool = False
    """True if the handshake was failed because of this verdict."""

    @property
    def good(self) -> bool:
        return self.state is OCSPState.GOOD

    def describe(self) -> str:
        """One line, e.g. ``good (valid until 2026-01-02 03:04 UTC)``."""
        return f"{self.state.value} ({self.detail})"


# -- the server: read the staple file --------------------------------------------


def load_staple(
    path: Path, leaf: x509.Certificate, *, now: datetime.datetime | None = None
) -> bytes:
    """The DER OCSP response in *path* to staple for *leaf* (b"" for an empty file).

    Raises ConfigError naming the path if the file is missing, unreadable,
    not an OCSP response, or not a SUCCESSFUL one (a "try later" answer is
    not worth stapling: keep the previous file). A response for another
    certificate, or one past its next_update, is logged as a warning and
    still served: the operator's refresh job may be a little late.
    """
    data = read_file(path, "OCSP staple file")
    if not data.strip():
        logger.info("OCSP staple file %s is empty: no staple", path)
        return b""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise ConfigError(
            f"OCSP staple file {path} is not a DER OCSP response "
            "(fetch one with: openssl ocsp ... -respout FILE)"
        ) from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ConfigError(
            f"OCSP staple file {path} holds an unsuccessful response "
            f"({response.response_status.name}): nothing to staple"
        )
    single = _single_for(response, leaf.serial_number)
    if single is None:
        logger.warning(
            "OCSP staple file %s does not cover the server certificate (serial %x): "
            "clients will refuse it",
            path,
            leaf.serial_number,
        )
        return data
    moment = now or datetime.datetime.now(datetime.UTC)
    if single.next_update_utc is not None and moment > single.next_update_utc:
        logger.warning(
            "OCSP staple file %s is stale: its next_update was %s; fetch a new one",
            path,
            f"{single.next_update_utc:%Y-%m-%d %H:%M} UTC",
        )
    if single.certificate_status is not ocsp.OCSPCertStatus.GOOD:
        logger.warning(
            "OCSP staple file %s says the server certificate is %s",
            path,
            single.certificate_status.name,
        )
    return data


class Stapler:
    """The server's OCSP callback: the same staple for every handshake that asks."""

    def __init__(self, staple: bytes) -> None:
        self.staple = staple

    def __call__(self, conn: SSL.Connection, data: object) -> bytes:
        return self.staple


def _single_for(response: ocsp.OCSPResponse, serial: int) -> ocsp.OCSPSingleResponse | None:
    for single in response.responses:
        if single.serial_number == serial:
            return single
    return None


# -- the client: check a staple -------------------------------------------------


def check_staple(
    der: bytes,
    leaf: x509.Certificate,
    issuer: x509.Certificate | None,
    *,
    now: datetime.datetime | None = None,
) -> OCSPStatus:
    """Judge the stapled response *der* for the server certificate *leaf*.

    *issuer* is the certificate that signed *leaf* (from the verified chain);
    without it the signature cannot be checked and the staple is INVALID.
    """
    if not der:
        return OCSPStatus(OCSPState.MISSING, "the server sent no OCSP staple")
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        return OCSPStatus(OCSPState.INVALID, "the staple is not a DER OCSP response")
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return OCSPStatus(
            OCSPState.INVALID, f"the OCSP response status is {response.response_status.name}"
        )
    single = _single_for(response, leaf.serial_number)
    if single is None:
        return OCSPStatus(
            OCSPState.INVALID,
            f"the staple does not cover the server certificate (serial {leaf.serial_number:x})",
        )
    if issuer is None:
        return OCSPStatus(
            OCSPState.INVALID, "the server certificate's issuer is unknown: cannot check the staple"
        )
    problem = _signature_problem(response, issuer)
    if problem:
        return OCSPStatus(OCSPState.INVALID, problem)
    moment = now or datetime.datetime.now(datetime.UTC)
    this_update, next_update = single.this_update_utc, single.next_update_utc

    def verdict(state: OCSPState, detail: str) -> OCSPStatus:
        return OCSPStatus(state, detail, this_update, next_update)

    if this_update > moment + CLOCK_SKEW:
        return verdict(OCSPState.INVALID, f"the staple is from the future ({_utc(this_update)})")
    if next_update is not None and moment > next_update:
        return verdict(OCSPState.INVALID, f"the staple expired at {_utc(next_update)}")
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.REVOKED:
        revoked = single.revocation_time_utc
        at = f" at {_utc(revoked)}" if revoked is not None else ""
        return verdict(OCSPState.REVOKED, f"the certificate was revoked{at}")
    if status is ocsp.OCSPCertStatus.UNKNOWN:
        return verdict(OCSPState.UNKNOWN, "the responder does not know the certificate")
    until = f"valid until {_utc(next_update)}" if next_update else "no next_update"
    return verdict(OCSPState.GOOD, f"not revoked; {until}")


def _utc(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _signature_problem(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> str | None:
    """None if *issuer* (or a responder it delegated to) signed *response*; else why not."""
    signer = issuer
    for responder in response.certificates:
        if responder.subject == issuer.subject and responder.public_key() == issuer.public_key():
            break
        try:
            responder.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return "the staple's responder certificate was not issued by the server's CA"
        try:
            usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            return "the staple's responder certificate is not authorised for OCSP signing"
        signer = responder
        break
    try:
        _verify(signer, response)
    except (InvalidSignature, ValueError, TypeError):
        return "the staple's signature does not verify against the server certificate's issuer"
    return None


def _verify(signer: x509.Certificate, response: ocsp.OCSPResponse) -> None:
    key = signer.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    algorithm = response.signature_hash_algorithm
    if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey) and isinstance(algorithm, hashes.HashAlgorithm):
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise TypeError(f"unsupported OCSP signing key {type(key).__name__}")


# Verdicts by connection. Weak keys: a verdict lives as long as its Connection.
_verdicts: weakref.WeakKeyDictionary[SSL.Connection, OCSPStatus] = weakref.WeakKeyDictionary()


def status_of(conn: SSL.Connection) -> OCSPStatus | None:
    """The verdict on *conn*'s staple, or None if the client did not ask for one."""
    return _verdicts.get(conn)


class OCSPChecker:
    """The client's OCSP callback: judge the staple, record the verdict, maybe refuse.

    With *require*, anything but GOOD (or a resumed session, whose status
    was checked when it was first made) fails the handshake.
    """

    def __init__(self, *, require: bool) -> None:
        self.require = require

    def __call__(self, conn: SSL.Connection, der: bytes, data: object) -> bool:
        try:
            verdict = self._judge(conn, der)
        except Exception as exc:  # never raise into OpenSSL; see the module docstring
            verdict = OCSPStatus(OCSPState.INVALID, f"could not check the staple: {exc}")
        refuse = self.require and verdict.state not in (OCSPState.GOOD, OCSPState.RESUMED)
        if refuse:
            verdict = OCSPStatus(
                verdict.state,
                verdict.detail,
                verdict.this_update,
                verdict.next_update,
                refused=True,
            )
        _verdicts[conn] = verdict
        return not refuse

    @staticmethod
    def _judge(conn: SSL.Connection, der: bytes) -> OCSPStatus:
        if not der and _ossl.session_reused(conn):
            return OCSPStatus(OCSPState.RESUMED, "resumed session: status checked when it began")
        leaf = conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return OCSPStatus(OCSPState.INVALID, "the server sent no certificate")
        return check_staple(der, leaf, _issuer_of(conn, leaf))


def _issuer_of(conn: SSL.Connection, leaf: x509.Certificate) -> x509.Certificate | None:
    # The verified chain includes the trust anchor from the CA file; without
    # verification (--insecure) fall back to what the server sent.
    for chain in (
        conn.get_verified_chain(as_cryptography=True),
        conn.get_peer_cert_chain(as_cryptography=True),
    ):
        for cert in (chain or [])[1:]:
            if cert.subject == leaf.issuer:
                return cert
    return None
