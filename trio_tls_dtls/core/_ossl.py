"""The few OpenSSL calls pyOpenSSL does not expose, in one place.

pyOpenSSL has no public API for hostname verification, for asking whether a
session was resumed, for the certificate verification result, or for the
kind of key a certificate has. Each is a call or two into the OpenSSL
bindings that ship with ``cryptography`` (``OpenSSL._util.lib``), which
pyOpenSSL itself is built on. Nor can it tell
whether two Session objects are one session (that compares its handles).
Keeping them here (and the callbacks in :mod:`._ossl_callbacks`) means two
modules to check when either library moves; the test matrix exercises them
on the oldest and newest supported versions.
"""

from __future__ import annotations

import ipaddress
import weakref
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = [
    "certificate_key_is_rsa",
    "same_session",
    "session_reused",
    "set_expected_host",
    "verify_error",
]

_lib_any: Any = _lib
_ffi_any: Any = _ffi

# "*.example.com" matches "a.example.com" but never "xa.example.com".
_NO_PARTIAL_WILDCARDS = 0x4


def _ssl_ptr(conn: SSL.Connection) -> Any:
    return conn._ssl


def set_expected_host(conn: SSL.Connection, host: str) -> None:
    """Make OpenSSL check that the peer certificate is valid for *host*.

    The check is set on this connection's own verify parameters (never on the
    shared Context), and runs inside certificate verification, so a mismatch
    fails the handshake with an alert rather than after it.
    """
    param = _lib_any.SSL_get0_param(_ssl_ptr(conn))
    try:
        packed = ipaddress.ip_address(host.strip("[]")).packed
    except ValueError:
        name = host.encode("idna")
        _lib_any.X509_VERIFY_PARAM_set_hostflags(param, _NO_PARTIAL_WILDCARDS)
        ok = _lib_any.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    else:
        ok = _lib_any.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    if ok != 1:
        raise ValueError(f"OpenSSL refused {host!r} as a host name to verify")


def session_reused(conn: SSL.Connection) -> bool:
    """True if the handshake resumed an earlier session."""
    return bool(_lib_any.SSL_session_reused(_ssl_ptr(conn)))


def same_session(a: SSL.Session, b: SSL.Session) -> bool:
    """True if two pyOpenSSL Session objects wrap the same OpenSSL session.

    ``Connection.get_session`` makes a new wrapper on every call. A TLS 1.3
    client's session is replaced by a new one for each ticket the server
    sends, so a changed session means a ticket (a resumable session) arrived.
    """
    return bool(a._session == b._session)


def verify_error(conn: SSL.Connection) -> str | None:
    """OpenSSL's text for why the peer certificate failed to verify, or None."""
    code = _lib_any.SSL_get_verify_result(_ssl_ptr(conn))
    if code == 0:  # X509_V_OK
        return None
    text = _lib_any.X509_verify_cert_error_string(code)
    return str(_ffi_any.string(text).decode("ascii", "replace"))


# Per context: a context's certificates never change once it made a
# connection (contexts are built, then read-only).
_rsa_by_context: weakref.WeakKeyDictionary[SSL.Context, bool] = weakref.WeakKeyDictionary()


def certificate_key_is_rsa(conn: SSL.Connection) -> bool:
    """True if the certificate *conn* would present has an RSA key (False without one)."""
    context = conn.get_context()
    known = _rsa_by_context.get(context)
    if known is None:
        known = False
        cert = _lib_any.SSL_get_certificate(_ssl_ptr(conn))
        if cert != _ffi_any.NULL:
            key = _lib_any.X509_get_pubkey(cert)
            if key != _ffi_any.NULL:
                known = _lib_any.EVP_PKEY_id(key) == _lib_any.EVP_PKEY_RSA
                _lib_any.EVP_PKEY_free(key)
        _rsa_by_context[context] = known
    return known
