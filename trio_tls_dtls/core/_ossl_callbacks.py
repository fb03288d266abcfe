"""The OpenSSL callbacks pyOpenSSL does not offer: PSK, strict ALPN, client identity rules.

Like :mod:`._ossl`, these call the OpenSSL bindings that ship with
``cryptography`` (``OpenSSL._util.lib``); the two modules are the only ones
that do, so one pair of files shows everything to check when either library
moves.

Theory of operation
-------------------
Each callback is *one* cffi callback, made when this module is imported and
alive as long as the module. A context does not own its callback: it
registers a :class:`_Policy` (the PSK table, the ALPN list, the identity
rules) in a weak map keyed by the pyOpenSSL ``Context``, and the callback
looks up the policy of the context the connection uses *now*. That matters
because OpenSSL copies some callbacks (PSK, verification) from the
``SSL_CTX`` into each ``SSL`` when the connection is made: after an SNI
switch or a reload, a callback owned by a context could be freed while a
connection still calls it. A module-level callback cannot dangle, and every
context built from one settings object registers the same policy.

The callbacks never raise. cffi would print the traceback and return the
error value anyway; we catch, log, and fail the handshake with a reason.
What a callback learns about a connection (the PSK identity it used, why it
refused it) is kept per connection in a weak map, read by the engine for
:class:`~trio_tls_dtls.core.peer_info.PeerInfo` and for the reason of a
failed handshake.

Thread safety: OpenSSL calls these from whichever thread runs the
handshake. Policies are immutable once registered; each connection's notes
are written only by the thread that owns the connection.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ._ossl import same_session
from .errors import ConfigError
from .psk import PSKTable

__all__ = [
    "IdentityCheck",
    "explain_failure",
    "is_resumption",
    "offer_session",
    "psk_identity",
    "require_alpn",
    "use_client_psk",
    "use_identity_check",
    "use_psk_table",
]

logger = logging.getLogger(__name__)

_lib_any: Any = _lib
_ffi_any: Any = _ffi

_TLS1_3_VERSION = 0x0304

IdentityCheck = Callable[[x509.Certificate], "str | None"]
"""Given a verified client leaf certificate: None to admit it, or why not."""


@dataclass
class _Policy:
    """What one context's callbacks need; set while the context is built."""

    psk_table: PSKTable | None = None
    client_psk: tuple[bytes, bytes] | None = None  # (identity, key)
    alpn: tuple[bytes, ...] = ()
    identity_check: IdentityCheck | None = None


@dataclass
class _Notes:
    """What the callbacks learned about one connection."""

    psk_identity: str | None = None
    refusal: str | None = None
    unknown_psk: str | None = None  # TLS 1.3: ignored, unless nothing else works
    offered_session: SSL.Session | None = None


_policies: weakref.WeakKeyDictionary[SSL.Context, _Policy] = weakref.WeakKeyDictionary()
_notes: weakref.WeakKeyDictionary[SSL.Connection, _Notes] = weakref.WeakKeyDictionary()


def _policy_for(ctx: SSL.Context) -> _Policy:
    policy = _policies.get(ctx)
    if policy is None:
        policy = _policies[ctx] = _Policy()
    return policy


def _connection(ssl: Any) -> SSL.Connection:
    return SSL.Connection._reverse_mapping[ssl]


def _note(conn: SSL.Connection) -> _Notes:
    notes = _notes.get(conn)
    if notes is None:
        notes = _notes[conn] = _Notes()
    return notes


def _shown(peer_text: bytes) -> str:
    """Peer-supplied bytes made safe for one log line (escaped, bounded)."""
    text = peer_text[:64].decode("utf-8", "backslashreplace")
    return repr(text) + ("..." if len(peer_text) > 64 else "")


def _callback_type(setter: Any) -> Any:
    # The callback's C type exactly as this build of the bindings declares it
    # (older bindings say "const char *", newer ones "char *").
    return _ffi_any.typeof(setter).args[1]


def _require_psk_support() -> None:
    if not getattr(_lib_any, "Cryptography_HAS_PSK", 0):
        raise ConfigError("pre-shared keys: this OpenSSL build has no PSK support")


# -- PSK, server side ---------------------------------------------------------------


def _server_psk(ssl: Any, identity: Any, psk_out: Any, max_psk_len: int) -> int:
    try:
        conn = _connection(ssl)
        policy = _policies.get(conn.get_context())
        if policy is None or policy.psk_table is None:
            return 0
        name = _ffi_any.string(identity)
        table = policy.psk_table
        key = table.key_for(name)
        if key is not None:
            _note(conn).psk_identity = name.decode()
        elif _lib_any.SSL_version(ssl) == _TLS1_3_VERSION:
            # Ignored, as RFC 8446 asks: the client may still authenticate
            # with a certificate, and a session ticket arrives this way too.
            _note(conn).unknown_psk = f"unknown PSK identity {_shown(name)}"
            return 0
        else:
            # A decoy key: the handshake fails at Finished just as with a
            # wrong key, so the peer cannot tell which (see core/psk.py).
            _note(conn).refusal = f"unknown PSK identity {_shown(name)}"
            key = table.decoy
        if len(key) > max_psk_len:  # pragma: no cover - 64 < OpenSSL's 512
            return 0
        _ffi_any.memmove(psk_out, key, len(key))
        return len(key)
    except Exception:  # pragma: no cover - a bug; fail this handshake only
        logger.exception("PSK server callback failed")
        return 0


_SERVER_PSK_CB = _ffi_any.callback(
    _callback_type(_lib_any.SSL_CTX_set_psk_server_callback), _server_psk, error=0
)


# An external PSK has a hash, SHA-256 unless agreed otherwise (RFC 8446
# section 4.2.11), and OpenSSL picks the TLS 1.3 suite *before* it reads the
# PSK: with a SHA-384 suite first, a server that also has a certificate would
# choose it and then find the PSK unusable. AES-128-GCM first is also what
# Mozilla's configurations recommend.
_TLS13_SUITES_FOR_PSK = (
    b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
)


def use_psk_table(ctx: SSL.Context, table: PSKTable, hint: str | None = None) -> None:
    """Make *ctx* answer PSK handshakes from *table* (TLS 1.2 suites are the caller's job)."""
    _require_psk_support()
    _policy_for(ctx).psk_table = table
    _lib_any.SSL_CTX_set_psk_server_callback(ctx._context, _SERVER_PSK_CB)
    if _lib_any.SSL_CTX_set_ciphersuites(ctx._context, _TLS13_SUITES_FOR_PSK) != 1:
        raise ConfigError("OpenSSL refused the TLS 1.3 cipher suites")  # pragma: no cover
    if hint is None:
        return
    if _lib_any.SSL_CTX_use_psk_identity_hint(ctx._context, hint.encode()) != 1:
        raise ConfigError(f"psk_identity_hint: OpenSSL refused {hint!r}")


# -- PSK, client side ---------------------------------------------------------------


def _client_psk(
    ssl: Any, hint: Any, identity_out: Any, max_identity_len: int, psk_out: Any, max_psk: int
) -> int:
    try:
        policy = _policies.get(_connection(ssl).get_context())
        if policy is None or policy.client_psk is None:
            return 0
        identity, key = policy.client_psk
        if len(identity) > max_identity_len or len(key) > max_psk:  # pragma: no cover
            return 0
        # OpenSSL's identity buffer has room for the terminating NUL.
        _ffi_any.memmove(identity_out, identity + b"\0", len(identity) + 1)
        _ffi_any.memmove(psk_out, key, len(key))
        return len(key)
    except Exception:  # pragma: no cover - a bug; fail this handshake only
        logger.exception("PSK client callback failed")
        return 0


_CLIENT_PSK_CB = _ffi_any.callback(
    _callback_type(_lib_any.SSL_CTX_set_psk_client_callback), _client_psk, error=0
)


def use_client_psk(ctx: SSL.Context, identity: str, key: bytes) -> None:
    """Make *ctx* offer *identity* and *key* to servers that choose a PSK suite."""
    _require_psk_support()
    _policy_for(ctx).client_psk = (identity.encode(), key)
    _lib_any.SSL_CTX_set_psk_client_callback(ctx._context, _CLIENT_PSK_CB)


# -- ALPN as RFC 7301 says ------------------------------------------------------------


def _offered_protocols(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, protocol) for each entry of a wire-format ALPN list."""
    entries, offset = [], 0
    while offset < len(data):
        size = data[offset]
        if size == 0 or offset + 1 + size > len(data):
            break  # OpenSSL checked the list already; stop rather than trust it
        entries.append((offset + 1, data[offset + 1 : offset + 1 + size]))
        offset += 1 + size
    return entries


def _select_alpn(ssl: Any, out: Any, outlen: Any, offered: Any, offered_len: int, arg: Any) -> int:
    try:
        conn = _connection(ssl)
        policy = _policies.get(conn.get_context())
        ours = policy.alpn if policy is not None else ()
        entries = _offered_protocols(bytes(_ffi_any.buffer(offered, offered_len)))
        for proto in ours:
            for offset, theirs in entries:
                if theirs == proto:
                    # Point into the client's list, which OpenSSL keeps for
                    # the rest of the handshake: nothing of ours to keep alive.
                    out[0] = offered + offset
                    outlen[0] = len(proto)
                    return int(_lib_any.SSL_TLSEXT_ERR_OK)
        offered_text = ",".join(_shown(p) for _, p in entries) or "nothing"
        _note(conn).refusal = (
            "no application protocol in common (ALPN): client offered "
            f"{offered_text}, server has {','.join(p.decode() for p in ours)}"
        )
    except Exception:  # pragma: no cover - a bug; fail this handshake only
        logger.exception("ALPN select callback failed")
    # Anything but OK/NOACK makes OpenSSL send no_application_protocol.
    return int(_lib_any.SSL_TLSEXT_ERR_ALERT_FATAL)


_ALPN_CB = _ffi_any.callback(
    _callback_type(_lib_any.SSL_CTX_set_alpn_select_cb),
    _select_alpn,
    error=int(_lib_any.SSL_TLSEXT_ERR_ALERT_FATAL),
)


def require_alpn(ctx: SSL.Context, protocols: Sequence[str]) -> None:
    """Choose the first of *protocols* the client offers; none in common ends the handshake.

    pyOpenSSL's own selector can only carry on without ALPN or abort with an
    internal_error alert; RFC 7301 section 3.2 asks for no_application_protocol.
    A client that offers no ALPN at all is not asked (the callback never runs).
    """
    _policy_for(ctx).alpn = tuple(p.encode() for p in protocols)
    _lib_any.SSL_CTX_set_alpn_select_cb(ctx._context, _ALPN_CB, _ffi_any.NULL)


# -- client identity rules ------------------------------------------------------------


def _leaf_certificate(store_ctx: Any) -> x509.Certificate:
    cert = _lib_any.X509_STORE_CTX_get_current_cert(store_ctx)
    bio = _lib_any.BIO_new(_lib_any.BIO_s_mem())
    try:
        if _lib_any.i2d_X509_bio(bio, cert) != 1:  # pragma: no cover - OpenSSL made it
            raise ValueError("could not encode the client certificate")
        data = _ffi_any.new("char **")
        size = _lib_any.BIO_get_mem_data(bio, data)
        der = bytes(_ffi_any.buffer(data[0], size))
    finally:
        _lib_any.BIO_free(bio)
    return x509.load_der_x509_certificate(der)


def _verify(preverify_ok: int, store_ctx: Any) -> int:
    # Called for each certificate of the chain, after OpenSSL's own checks
    # (signatures, dates, CRLs): keep its verdict, and add ours on the leaf.
    if not preverify_ok or _lib_any.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
        return int(preverify_ok)
    conn: SSL.Connection | None = None
    try:
        index = _lib_any.SSL_get_ex_data_X509_STORE_CTX_idx()
        conn = _connection(_lib_any.X509_STORE_CTX_get_ex_data(store_ctx, index))
        policy = _policies.get(conn.get_context())
        if policy is None or policy.identity_check is None:
            return 1
        reason = policy.identity_check(_leaf_certificate(store_ctx))
    except Exception:  # pragma: no cover - a bug; refuse rather than admit
        logger.exception("client identity check failed")
        reason = "internal error in the client identity check"
    if reason is None:
        return 1
    if conn is not None:
        _note(conn).refusal = reason
    _lib_any.X509_STORE_CTX_set_error(store_ctx, _lib_any.X509_V_ERR_APPLICATION_VERIFICATION)
    return 0


_VERIFY_CB = _ffi_any.callback("int (*)(int, X509_STORE_CTX *)", _verify, error=0)


def use_identity_check(ctx: SSL.Context, check: IdentityCheck, mode: int) -> None:
    """Verify clients with *mode*, then refuse a leaf that *check* does not admit.

    The refusal happens inside certificate verification, so the client gets
    a handshake_failure alert and never reaches the handler.
    """
    _policy_for(ctx).identity_check = check
    _lib_any.SSL_CTX_set_verify(ctx._context, mode, _VERIFY_CB)


# -- what the engine asks after (or instead of) a handshake -------------------------------


def psk_identity(conn: SSL.Connection, *, server_side: bool, peer_cert: bool) -> str | None:
    """The identity of the external PSK this handshake used, or None.

    A server learns it in its callback (and never resumes a session when it
    has PSKs, see contexts.py). A client offers its one identity, which was
    used if the server sent no certificate (TLS 1.2 PSK suites and TLS 1.3
    PSK handshakes have none; a resumed session keeps the certificate it
    was made with).
    """
    if server_side:
        return _server_psk_identity(conn)
    policy = _policies.get(conn.get_context())
    if policy is None or policy.client_psk is None or peer_cert:
        return None
    return policy.client_psk[0].decode()


def _server_psk_identity(conn: SSL.Connection) -> str | None:
    # The callback found a key; the handshake used it only if it chose a PSK
    # suite (TLS 1.2) or kept the PSK (TLS 1.3: "reused", as this server
    # never resumes sessions). A client can offer a PSK and still end up
    # authenticating the server by its certificate.
    notes = _notes.get(conn)
    if notes is None or notes.psk_identity is None:
        return None
    ssl = conn._ssl
    if _lib_any.SSL_version(ssl) == _TLS1_3_VERSION:
        used = bool(_lib_any.SSL_session_reused(ssl))
    else:
        used = "PSK" in (conn.get_cipher_name() or "")
    return notes.psk_identity if used else None


def is_resumption(conn: SSL.Connection, *, server_side: bool) -> bool:
    """Whether the handshake resumed an earlier session.

    OpenSSL also says "reused" for a TLS 1.3 handshake with an external PSK.
    A server knows from its callback. A TLS 1.3 client with a PSK resumed
    only if it still holds the session it offered (:func:`offer_session`):
    when the server takes the external PSK instead, OpenSSL swaps in a
    session made from the key. (Tickets that arrive later replace the
    session too, but only after the handshake, when this is asked.)
    """
    ssl = conn._ssl
    if not _lib_any.SSL_session_reused(ssl):
        return False
    if server_side:
        return _server_psk_identity(conn) is None
    policy = _policies.get(conn.get_context())
    if _lib_any.SSL_version(ssl) != _TLS1_3_VERSION or policy is None or not policy.client_psk:
        return True
    notes = _notes.get(conn)
    if notes is None or notes.offered_session is None:
        return False
    current = conn.get_session()
    return current is not None and same_session(current, notes.offered_session)


def offer_session(conn: SSL.Connection, session: SSL.Session) -> None:
    """Offer *session* for resumption on the client *conn* (and remember which)."""
    conn.set_session(session)
    _note(conn).offered_session = session


_WRONG_KEY_SIGNS = ("bad record mac", "decrypt", "binder", "digest check failed")


def explain_failure(conn: SSL.Connection, openssl_reason: str, *, server_side: bool) -> str | None:
    """A clearer reason for a failed handshake than OpenSSL's, when we have one."""
    notes = _notes.get(conn)
    if notes is not None and notes.refusal is not None:
        return notes.refusal
    policy = _policies.get(conn.get_context())
    no_certificate = server_side and not _lib_any.SSL_get_certificate(conn._ssl)
    if no_certificate and notes is not None and notes.unknown_psk:
        # A TLS 1.3 server with no certificate to fall back on.
        return f"{notes.unknown_psk} ({openssl_reason})"
    if no_certificate and policy is not None and policy.psk_table is not None and notes is None:
        return f"no pre-shared key offered, and no certificate to use instead ({openssl_reason})"
    wrong_key = any(sign in openssl_reason for sign in _WRONG_KEY_SIGNS)
    if server_side and notes is not None and notes.psk_identity is not None and wrong_key:
        return f"wrong PSK for identity {notes.psk_identity!r} ({openssl_reason})"
    if not server_side and policy is not None and policy.client_psk is not None and wrong_key:
        identity = policy.client_psk[0].decode()
        return f"server refused PSK identity {identity!r}: unknown or wrong key ({openssl_reason})"
    return None
