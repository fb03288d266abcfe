"""The sans-IO TLS engine: a pyOpenSSL Connection between two memory BIOs.

Ciphertext from the network goes in with :meth:`TLSEngine.receive_bytes`;
ciphertext for the network comes out of :meth:`TLSEngine.bytes_to_send`.
Everything in between (the handshake, records, alerts, close_notify) is
OpenSSL's state machine. This module never touches a socket, a thread or a
clock, which is what lets the tests pump two engines against each other in
memory and lets the drivers decide *where* each call runs.

OpenSSL reports "I need more input" as ``SSL_ERROR_WANT_READ`` (which
pyOpenSSL raises as ``WantReadError``). Here that is an ordinary state:
:meth:`~TLSEngine.do_handshake` returns False and :meth:`~TLSEngine.receive`
returns None. The calls made per record go through :mod:`.ssl_calls`, which
skips pyOpenSSL's per-call wrappers (and that exception). Real failures become
:class:`~trio_tls_dtls.core.errors.HandshakeError` or
:class:`~trio_tls_dtls.core.errors.TLSError` carrying OpenSSL's reason text.

Thread safety: none. One engine is used by one thread at a time; the
drivers' EngineGuard (:mod:`trio_tls_dtls.drivers.engine_guard`) keeps it,
and decides which calls run in a thread. The engine only reports facts the
decision needs (:attr:`~TLSEngine.sent_first_flight`,
:attr:`~TLSEngine.verifies_peer`).
"""

from __future__ import annotations

import contextlib
import ipaddress

from OpenSSL import SSL

from . import _ossl, _ossl_callbacks, ocsp, ssl_calls
from .errors import HandshakeError, TLSError
from .peer_info import Address, PeerInfo

__all__ = ["TLSEngine", "client_connection", "openssl_reason"]


# A BIO that held more than this at once is worth giving back when the
# connection waits (release_buffers): more than the drivers' 64 KiB socket
# reads and a record. Giving back smaller ones before every wait cost a
# 16 KiB echo (W4) 29 % more CPU (regrowing them), for memory it reuses.
_GROWN = 96 * 1024


def openssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason text from a pyOpenSSL exception, e.g. 'certificate verify failed'."""
    if isinstance(exc, SSL.SysCallError):
        return "unexpected EOF" if exc.args and exc.args[0] == -1 else str(exc)
    reasons: list[str] = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and entry and entry[-1]:  # OpenSSL 3 says "ssl/tls alert"
            reasons.append(str(entry[-1]).removeprefix("ssl/"))
    return "; ".join(dict.fromkeys(reasons)) or (str(exc) or type(exc).__name__)


class TLSEngine:
    """One TLS (or DTLS) connection's protocol state, with no I/O of its own.

    Make one with :meth:`server` or :meth:`client` from a fully built
    Context (see :mod:`trio_tls_dtls.core.contexts`).
    """

    __slots__ = (
        "_awaiting_hello",
        "_conn",
        "_eof",
        "_grown",
        "_handshake_done",
        "_peer_closed",
        "_sent_close",
        "_sent_flight",
        "server_side",
    )
    _name = "TLS"
    # With TLS, OpenSSL reads one record at a time from the input BIO, so
    # nothing fed and nothing decrypted means nothing to read. (DTLS reads a
    # whole datagram ahead and may hold unread records we cannot see.)
    _skip_empty_reads = True

    def __init__(self, conn: SSL.Connection, *, server_side: bool) -> None:
        self._conn = conn
        self.server_side = server_side
        self._handshake_done = False
        self._peer_closed = False
        self._sent_close = False
        self._sent_flight = False
        self._eof = False
        self._awaiting_hello = False
        self._grown = False

    @classmethod
    def server(cls, context: SSL.Context) -> TLSEngine:
        """A server-side engine that will wait for a ClientHello."""
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        engine = cls(conn, server_side=True)
        engine._awaiting_hello = True
        return engine

    @classmethod
    def client(
        cls,
        context: SSL.Context,
        server_hostname: str | None = None,
        *,
        check_hostname: bool = True,
        session: SSL.Session | None = None,
    ) -> TLSEngine:
        """A client-side engine.

        *server_hostname* is sent as SNI (unless it is an IP address) and,
        with *check_hostname*, must match the server's certificate. Pass
        *session* from an earlier connection's :attr:`session` to resume it.
        """
        conn = client_connection(context, server_hostname, check_hostname, session)
        return cls(conn, server_side=False)

    # -- state --------------------------------------------------------------

    @property
    def connection(self) -> SSL.Connection:
        """The wrapped pyOpenSSL Connection (for the DTLS layer and advanced use)."""
        return self._conn

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def peer_closed(self) -> bool:
        """True once the peer's close_notify has been read."""
        return self._peer_closed

    @property
    def session(self) -> SSL.Session | None:
        """The current session, to resume later with ``TLSEngine.client(session=...)``."""
        return self._conn.get_session()

    @property
    def sent_first_flight(self) -> bool:
        """True once :meth:`bytes_to_send` has returned ciphertext.

        For a server: it has answered the ClientHello. (A fact for the
        drivers' cost model of a handshake step, which lives with them.)
        """
        return self._sent_flight

    @property
    def verifies_peer(self) -> bool:
        """True if the context asks for the peer's certificate (any mode but VERIFY_NONE)."""
        return bool(self._conn.get_context().get_verify_mode() != SSL.VERIFY_NONE)

    @property
    def awaiting_client_hello(self) -> bool:
        """True for a TLS server that has not been fed a byte of its ClientHello yet.

        Its next handshake step can only say "need input", so the engine
        answers that itself without asking OpenSSL (see :meth:`do_handshake`).
        """
        return (
            self._awaiting_hello and not self._eof and not ssl_calls.ciphertext_buffered(self._conn)
        )

    @property
    def signs_with_rsa(self) -> bool:
        """True if this end's certificate has an RSA key (its signature costs ≈ 1 ms, not 0.1).

        For a server, the default certificate: one chosen by SNI during the
        handshake is not known before.
        """
        return _ossl.certificate_key_is_rsa(self._conn)

    # -- ciphertext in and out ---------------------------------------------

    def receive_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext received from the peer."""
        if data:
            ssl_calls.feed(self._conn, data)
            if len(data) > _GROWN:
                self._grown = True

    def receive_eof(self) -> None:
        """The transport ended. A later read without close_notify is a truncation."""
        self._eof = True
        self._conn.bio_shutdown()

    @property
    def has_bytes_to_send(self) -> bool:
        """True if :meth:`bytes_to_send` would return ciphertext (one cheap query)."""
        return ssl_calls.ciphertext_waiting(self._conn) > 0

    def bytes_to_send(self) -> bytes:
        """All ciphertext waiting to go to the peer (b"" if none)."""
        data = ssl_calls.take_output(self._conn)
        if data:
            self._sent_flight = True
            if len(data) > _GROWN:
                self._grown = True
        return data

    # -- memory --------------------------------------------------------------

    @property
    def buffers_grown(self) -> bool:
        """True if a memory BIO held more than 96 KiB at once since :meth:`release_buffers`."""
        return self._grown

    def release_buffers(self) -> None:
        """Give back the memory of the BIOs that are empty now.

        A memory BIO keeps the largest buffer it ever needed for the life of
        the connection: the ClientHello and the server's flight (≈ 4 KiB with
        the hybrid ML-KEM group), or ≈ 85 KiB each way after one 64 KiB
        read and echo. The drivers call this after the handshake and, when
        :attr:`buffers_grown`, before they wait for the peer. A BIO that
        still holds bytes is kept.
        """
        ssl_calls.renew_empty_bios(self._conn, eof=self._eof)
        self._grown = False

    # -- handshake -------------------------------------------------------------

    def do_handshake(self) -> bool:
        """Advance the handshake: True once it is complete, False if it needs input.

        Raises HandshakeError with OpenSSL's reason if the handshake failed;
        any alert explaining why is left in :meth:`bytes_to_send`.
        """
        if self._handshake_done:
            return True
        if self._awaiting_hello:
            # A server with no ClientHello yet: OpenSSL could only say
            # WANT_READ (through a raised exception). It starts with the
            # hello, or with the EOF that says none will come.
            if not self._eof and not ssl_calls.ciphertext_buffered(self._conn):
                return False
            self._awaiting_hello = False
        try:
            if not ssl_calls.handshake_step(self._conn):
                return False
        except SSL.Error as exc:
            raise HandshakeError(self._describe_failure(exc), reason=self._reason(exc)) from exc
        self._handshake_done = True
        return True

    def _reason(self, exc: SSL.Error) -> str:
        if isinstance(exc, SSL.SysCallError):
            return "peer closed the connection during the handshake"
        verdict = ocsp.status_of(self._conn)
        if verdict is not None and verdict.refused:
            return f"OCSP staple refused: {verdict.state.value}: {verdict.detail}"
        reason = openssl_reason(exc)
        detail = _ossl.verify_error(self._conn)
        if detail and "certificate verify failed" in reason:
            reason = f"{reason} ({detail})"
        # A PSK or ALPN refusal, or an identity rule, says more than OpenSSL.
        ours = _ossl_callbacks.explain_failure(self._conn, reason, server_side=self.server_side)
        return ours or reason

    def _describe_failure(self, exc: SSL.Error) -> str:
        return f"{self._name} handshake failed: {self._reason(exc)}"

    # -- application data -------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt *data* into records; they come out of :meth:`bytes_to_send`."""
        if self._sent_close:
            raise TLSError("cannot send after close_notify")
        if not data:
            return
        try:
            ssl_calls.write(self._conn, data)
        except SSL.Error as exc:
            raise TLSError(
                f"TLS send failed: {openssl_reason(exc)}", reason=openssl_reason(exc)
            ) from exc

    def receive(self, max_bytes: int) -> bytes | None:
        """Up to *max_bytes* of plaintext; None if more ciphertext is needed.

        Returns b"" once the peer has sent close_notify. Raises TLSError if
        the stream was truncated (EOF without close_notify) or corrupted.
        """
        if self._peer_closed:
            return b""
        conn = self._conn
        if (
            self._skip_empty_reads
            and not self._eof
            # Ciphertext first: just after a feed, one query says "go ahead".
            and not ssl_calls.ciphertext_buffered(conn)
            and not ssl_calls.plaintext_buffered(conn)
        ):
            return None  # what SSL_read would say, without calling it
        try:
            return ssl_calls.read(conn, max_bytes)
        except SSL.ZeroReturnError:
            self._peer_closed = True
            return b""
        except SSL.SysCallError as exc:
            raise TLSError(
                "peer closed the connection without close_notify (truncated stream)",
                reason="unexpected EOF",
            ) from exc
        except SSL.Error as exc:
            reason = openssl_reason(exc)
            raise TLSError(f"TLS receive failed: {reason}", reason=reason) from exc

    def receive_many(self, max_bytes: int) -> bytes | None:
        """Like :meth:`receive`, but decrypts as many records as fit in *max_bytes*.

        One call for a large buffered chunk: this is what runs in a worker
        thread when a big read is offloaded.
        """
        first = self.receive(max_bytes)
        if not first:
            return first
        parts = [first]
        total = len(first)
        while total < max_bytes:
            try:
                more = self.receive(max_bytes - total)
            except TLSError:
                break  # reported by the next call, after this data is delivered
            if not more:
                break
            parts.append(more)
            total += len(more)
        return b"".join(parts) if len(parts) > 1 else first

    def pending(self) -> int:
        """Plaintext bytes already decrypted and waiting to be read."""
        return ssl_calls.plaintext_buffered(self._conn)

    def close(self) -> None:
        """Queue our close_notify (once). Nothing is sent before the handshake."""
        if self._sent_close:
            return
        self._sent_close = True
        if not self._handshake_done:
            return
        # A broken or already shut-down connection has nothing useful to say.
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    # -- what was negotiated ---------------------------------------------

    def peer_info(self, address: Address | None, *, transport: str = "tls") -> PeerInfo:
        """A snapshot of the negotiated session (call after the handshake)."""
        conn = self._conn
        alpn = conn.get_alpn_proto_negotiated()
        name = conn.get_servername()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        cert = conn.get_peer_certificate(as_cryptography=True)
        side = self.server_side
        return PeerInfo(
            address=address,
            transport=transport,
            protocol=conn.get_protocol_version_name(),
            cipher=conn.get_cipher_name() or "",
            resumed=_ossl_callbacks.is_resumption(conn, server_side=side),
            alpn=alpn.decode("ascii", "replace") if alpn else None,
            server_name=name.decode("ascii", "replace") if name else None,
            certificate=cert,
            chain=tuple(chain),
            ocsp=ocsp.status_of(conn),
            psk_identity=_ossl_callbacks.psk_identity(conn, server_side=side, peer_cert=bool(cert)),
        )


def client_connection(
    context: SSL.Context,
    server_hostname: str | None,
    check_hostname: bool,
    session: SSL.Session | None,
) -> SSL.Connection:
    """A client Connection: SNI, the host name to verify, a session to resume."""
    conn = SSL.Connection(context, None)
    conn.set_connect_state()
    if server_hostname:
        if not _is_ip_address(server_hostname):
            conn.set_tlsext_host_name(server_hostname.encode("idna"))
        if check_hostname and context.get_verify_mode() != SSL.VERIFY_NONE:
            _ossl.set_expected_host(conn, server_hostname)
    if session is not None:
        _ossl_callbacks.offer_session(conn, session)
    return conn


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
