"""Settings → pyOpenSSL ``Context``, built completely once and then shared.

A pyOpenSSL Context is frozen the moment it makes its first Connection
(pyOpenSSL 25+ raises if it is changed afterwards, and older versions race).
So every option, callback and certificate goes in here, up front, and the
drivers only ever read the result. Per-connection choices (the host name a
client expects, the session it resumes) live on the Connection instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509StoreFlags

from . import _ossl_callbacks
from .client_identity import load_crls
from .errors import ConfigError
from .ocsp import OCSPChecker, Stapler, load_staple
from .pem_files import LoadedCertificate, load_ca_file, load_certificate
from .psk import PSKTable, load_psk_file
from .settings import (
    CertificateSettings,
    ClientSettings,
    ServerSettings,
    TLSVersion,
    VerifyClient,
)

__all__ = [
    "DTLS1_2_VERSION",
    "CertificateSwitch",
    "Certificates",
    "KeyLog",
    "build_certificates",
    "build_client_context",
    "build_front_context",
    "build_server_context",
    "client_context",
]

logger = logging.getLogger(__name__)

# pyOpenSSL exports the TLS version constants but not DTLS's.
DTLS1_2_VERSION = 0xFEFD

_TLS_VERSIONS: dict[TLSVersion, int] = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

# Compression (CRIME) and renegotiation (a DoS lever, and a source of
# surprise mid-stream) are off everywhere.
_COMMON_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION

# Session IDs and tickets are only valid within this context id; OpenSSL
# refuses to resume a session on a server that verifies clients unless one is
# set.
_SESSION_ID_CONTEXT = b"trio-tlsd"


class KeyLog:
    """Appends TLS secrets in the SSLKEYLOGFILE format (for Wireshark).

    OpenSSL calls this from whichever thread runs the handshake. Each line is
    one ``write(2)`` on an unbuffered ``O_APPEND`` descriptor, which the
    kernel appends whole, so concurrent handshakes never interleave within a
    line and no lock is needed (the core holds no threading primitives).
    The file is created 0600: it decrypts the traffic.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open key log file {path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "ab", buffering=0)

    def __call__(self, conn: SSL.Connection, line: bytes) -> None:
        self._file.write(line + b"\n")


def _new_context(dtls: bool, min_version: TLSVersion, max_version: TLSVersion) -> SSL.Context:
    if dtls:
        # Pinned to DTLS 1.2: OpenSSL 4.1 adds DTLS 1.3, whose server-side
        # listen API pyOpenSSL does not expose, and DTLS 1.0 is obsolete.
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
        # Memory BIOs have no path MTU to query: the MTU is set per
        # connection from settings instead.
        ctx.set_options(SSL.OP_NO_QUERY_MTU)
    else:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_TLS_VERSIONS[min_version])
        ctx.set_max_proto_version(_TLS_VERSIONS[max_version])
    ctx.set_options(_COMMON_OPTIONS)
    # Give the 34 KiB of read/write buffers back to the allocator whenever a
    # connection is idle: most connections are idle most of the time.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def _set_ciphers(ctx: SSL.Context, ciphers: str) -> None:
    try:
        ctx.set_cipher_list(ciphers.encode())
    except SSL.Error:
        raise ConfigError(f"ciphers: OpenSSL accepts none of {ciphers!r}") from None


def _use_certificate(ctx: SSL.Context, loaded: LoadedCertificate) -> None:
    ctx.use_certificate(loaded.leaf)
    for extra in loaded.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(loaded.key)  # type: ignore[arg-type]
    ctx.check_privatekey()


def _load_verify_file(ctx: SSL.Context, ca_file: Path) -> None:
    load_ca_file(ca_file)  # clear errors for a missing or malformed file
    ctx.load_verify_locations(os.fsencode(ca_file))


@dataclass(frozen=True)
class _ServerFiles:
    """What a server reads from disk once per build, shared by its SNI contexts."""

    psk_table: PSKTable | None
    crls: tuple[x509.CertificateRevocationList, ...]

    @classmethod
    def load(cls, settings: ServerSettings) -> _ServerFiles:
        table = None
        if settings.psk_enabled:
            keys = dict(settings.psk_keys)
            if settings.psk_file is not None:
                for identity, key in load_psk_file(settings.psk_file).items():
                    if identity in keys:
                        where = f"psk_file {settings.psk_file}"
                        raise ConfigError(f"{where}: identity {identity!r} is in psk_keys too")
                    keys[identity] = key
            table = PSKTable(keys)
        crls: list[x509.CertificateRevocationList] = []
        if settings.crl_file is not None:
            assert settings.ca_file is not None  # ServerSettings enforces it
            crls = load_crls(settings.crl_file, load_ca_file(settings.ca_file))
        return cls(table, tuple(crls))


def _verify_clients(ctx: SSL.Context, settings: ServerSettings, files: _ServerFiles) -> None:
    assert settings.ca_file is not None  # ServerSettings enforces it
    _load_verify_file(ctx, settings.ca_file)
    ctx.load_client_ca(os.fsencode(settings.ca_file))
    mode = SSL.VERIFY_PEER
    if settings.verify_client is VerifyClient.REQUIRED:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    if files.crls:
        store = ctx.get_cert_store()
        assert store is not None  # every SSL_CTX has one
        for crl in files.crls:
            store.add_crl(crl)
        store.set_flags(X509StoreFlags.CRL_CHECK)
    if settings._identity_rules:
        _ossl_callbacks.use_identity_check(ctx, settings._identity_rules, mode)
    else:
        ctx.set_verify(mode)


def _server_context_for(
    settings: ServerSettings,
    cert: CertificateSettings | None,
    dtls: bool,
    keylog: KeyLog | None,
    files: _ServerFiles,
) -> SSL.Context:
    # cert=None: no certificate (PSK only, or a front context: see ticket_keys.py).
    ctx = _new_context(dtls, settings.min_version, settings.max_version)
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    if files.psk_table is not None:
        # PSK suites first: only a client with a PSK offers them, and it
        # configured one to use it (with a certificate suite first, a server
        # with both would never use the key).
        _set_ciphers(ctx, f"{settings.psk_ciphers}:{settings.ciphers}")
        _ossl_callbacks.use_psk_table(ctx, files.psk_table, settings.psk_identity_hint)
    else:
        _set_ciphers(ctx, settings.ciphers)
    if cert is not None:
        loaded = load_certificate(cert.cert_file, cert.key_file, cert.key_password)
        _use_certificate(ctx, loaded)
        if cert.ocsp_staple_file is not None:
            # Read now, with the certificate: a reload rebuilds the context and
            # so picks up a refreshed staple file.
            ctx.set_ocsp_server_callback(Stapler(load_staple(cert.ocsp_staple_file, loaded.leaf)))
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    if not settings.session_tickets or files.psk_table is not None:
        # With PSKs, no resumption: OpenSSL's bindings cannot tell which
        # identity a resumed session was made with (PeerInfo.psk_identity).
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if settings.verify_client is not VerifyClient.NONE:
        _verify_clients(ctx, settings, files)
    if settings.alpn:
        _ossl_callbacks.require_alpn(ctx, settings.alpn)
    if keylog is not None:
        ctx.set_keylog_callback(keylog)
    if dtls:
        _accept_prechecked_cookies(ctx)
    return ctx


def _cookie_already_checked(conn: SSL.Connection, cookie: bytes) -> bool:
    return True


def _no_cookie_from_openssl(conn: SSL.Connection) -> bytes:
    # Never reached in practice: HelloVerifyRequests are ours (dtls/cookie.py).
    return b"\x00" * 16


def _accept_prechecked_cookies(ctx: SSL.Context) -> None:
    """Let DTLSv1_listen accept the ClientHellos our endpoint hands it.

    The endpoint verifies the cookie itself (stateless HMAC, before any
    per-peer state exists) and only then makes a Connection and calls
    DTLSv1_listen on it, which needs these callbacks to exist. Accepting
    every cookie here is safe only because of that order: nothing else ever
    calls DTLSv1_listen on these contexts.
    """
    ctx.set_cookie_generate_callback(_no_cookie_from_openssl)
    ctx.set_cookie_verify_callback(_cookie_already_checked)


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


@dataclass(frozen=True)
class Certificates:
    """The certificate contexts one reading of a server's files makes.

    *default* serves a client whose server name (SNI) matches none of
    *by_name*, or that sent none; *files* is what they were built with.
    """

    default: SSL.Context
    by_name: tuple[tuple[tuple[str, ...], SSL.Context], ...]
    files: _ServerFiles

    def for_name(self, raw: bytes | None) -> SSL.Context:
        if raw is not None:
            name = raw.decode("ascii", "replace").lower().rstrip(".")
            for patterns, ctx in self.by_name:
                if any(_name_matches(p, name) for p in patterns):
                    return ctx
        return self.default


class CertificateSwitch:
    """A servername callback: moves each connection to the context for its server name.

    OpenSSL calls it for every ClientHello, SNI or not. A connection moved
    with ``SSL_set_SSL_CTX`` takes that context's certificate, OCSP staple,
    CA store and callbacks, and keeps the session-ticket keys (and the
    callbacks OpenSSL copied when it was made) of the context it was made
    from. :attr:`certificates` is replaced whole by a reload: one attribute
    store, which a handshake in another thread reads before or after.
    """

    def __init__(self, certificates: Certificates) -> None:
        self.certificates = certificates

    def __call__(self, conn: SSL.Connection) -> None:
        ctx = self.certificates.for_name(conn.get_servername())
        if ctx is not conn.get_context():
            conn.set_context(ctx)


def build_certificates(
    settings: ServerSettings, *, dtls: bool = False, keylog: KeyLog | None = None
) -> Certificates:
    """Read the files of *settings* into certificate contexts; ConfigError names a bad one."""
    files = _ServerFiles.load(settings)
    default = _server_context_for(settings, settings.certificate, dtls, keylog, files)
    by_name = tuple(
        (sni.server_names, _sni_context_for(settings, sni, dtls, keylog, files))
        for sni in settings.sni_certificates
    )
    return Certificates(default, by_name, files)


def build_front_context(
    settings: ServerSettings,
    switch: CertificateSwitch,
    *,
    dtls: bool = False,
    keylog: KeyLog | None = None,
) -> SSL.Context:
    """A context with every setting but a certificate, which *switch* supplies per connection.

    What OpenSSL copies into a connection when it is made (options,
    verification mode and callback, PSK callbacks) comes from here; the
    certificate, and what else is read from files, from the switch's contexts.
    """
    files = switch.certificates.files
    ctx = _server_context_for(settings, None, dtls, keylog, files)
    ctx.set_tlsext_servername_callback(switch)
    return ctx


def _sni_context_for(
    settings: ServerSettings,
    cert: CertificateSettings,
    dtls: bool,
    keylog: KeyLog | None,
    files: _ServerFiles,
) -> SSL.Context:
    try:
        return _server_context_for(settings, cert, dtls, keylog, files)
    except ConfigError as exc:  # say which of several certificates is at fault
        raise ConfigError(f"SNI certificate for {', '.join(cert.server_names)}: {exc}") from None


def build_server_context(settings: ServerSettings, *, dtls: bool = False) -> SSL.Context:
    """A complete server Context for *settings* (TLS, or DTLS 1.2 with ``dtls``).

    Raises ConfigError naming the file or setting at fault.
    """
    keylog = KeyLog(settings.keylog_file) if settings.keylog_file else None
    certificates = build_certificates(settings, dtls=dtls, keylog=keylog)
    if certificates.by_name:
        certificates.default.set_tlsext_servername_callback(CertificateSwitch(certificates))
    return certificates.default


def build_client_context(settings: ClientSettings, *, dtls: bool = False) -> SSL.Context:
    """A complete client Context for *settings*. Host names are checked per connection."""
    ctx = _new_context(dtls, settings.min_version, settings.max_version)
    if settings.psk_identity is not None and settings.psk_key is not None:
        _set_ciphers(ctx, f"{settings.psk_ciphers}:{settings.ciphers}")
        _ossl_callbacks.use_client_psk(ctx, settings.psk_identity, settings.psk_key)
    else:
        _set_ciphers(ctx, settings.ciphers)
    if settings.verify:
        if settings.ca_file is not None:
            _load_verify_file(ctx, settings.ca_file)
        else:
            ctx.set_default_verify_paths()
        ctx.set_verify(SSL.VERIFY_PEER)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if settings.certificate is not None:
        cert = settings.certificate
        _use_certificate(ctx, load_certificate(cert.cert_file, cert.key_file, cert.key_password))
    if settings.alpn:
        ctx.set_alpn_protos([p.encode() for p in settings.alpn])
    if settings.keylog_file is not None:
        ctx.set_keylog_callback(KeyLog(settings.keylog_file))
    if settings.request_ocsp:
        # The request itself is per connection (see tls/client.py); the check
        # is this context-wide callback, which records a verdict per connection.
        ctx.set_ocsp_client_callback(OCSPChecker(require=settings.require_ocsp))
    return ctx


def client_context(settings: ClientSettings, *, dtls: bool = False) -> SSL.Context:
    """The shared client Context for this *settings* object, built on first use.

    One settings object serves any number of connections: they all share
    this read-only Context, and a session from one resumes on another.
    """
    key = "dtls" if dtls else "tls"
    ctx = settings._contexts.get(key)
    if ctx is None:
        # Two threads racing here may both build one; setdefault (atomic on
        # a dict) keeps the first, so every caller still shares one Context.
        ctx = settings._contexts.setdefault(key, build_client_context(settings, dtls=dtls))
    assert isinstance(ctx, SSL.Context)
    return ctx
