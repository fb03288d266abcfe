"""The sans-IO TLS engine: a pyOpenSSL Connection between two memory BIOs.

Ciphertext from the network goes in with :meth:`TLSEngine.receive_bytes`;
ciphertext for the network comes out of :meth:`TLSEngine.bytes_to_send`.
Everything in between (the handshake, records, alerts, close_notify) is
OpenSSL's state machine. This module never touches a socket, a thread or a
clock, which is what lets the tests pump two engines against each other in
memory and lets the drivers decide *where* each call runs.

OpenSSL reports "I need more input" by raising ``WantReadError``. Here that
is an ordinary state: :meth:`~TLSEngine.do_handshake` returns False and
:meth:`~TLSEngine.receive` returns None. Real failures become
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

from . import _ossl, _ossl_callbacks, ocsp
from .errors import DatagramTooLargeError, HandshakeError, TLSError
from .peer_info import Address, PeerInfo

__all__ = ["DTLSEngine", "TLSEngine", "openssl_reason", "pack_datagrams", "split_records"]


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
        "_conn",
        "_eof",
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

    @classmethod
    def server(cls, context: SSL.Context) -> TLSEngine:
        """A server-side engine that will wait for a ClientHello."""
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        return cls(conn, server_side=True)

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
        conn = _client_connection(context, server_hostname, check_hostname, session)
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

    # -- ciphertext in and out ---------------------------------------------

    def receive_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext received from the peer."""
        if data:
            self._conn.bio_write(data)

    def receive_eof(self) -> None:
        """The transport ended. A later read without close_notify is a truncation."""
        self._eof = True
        self._conn.bio_shutdown()

    def bytes_to_send(self) -> bytes:
        """All ciphertext waiting to go to the peer (b"" if none)."""
        conn = self._conn
        waiting = _ossl.ciphertext_waiting(conn)
        if not waiting:
            return b""
        self._sent_flight = True
        return conn.bio_read(waiting)

    # -- handshake -------------------------------------------------------------

    def do_handshake(self) -> bool:
        """Advance the handshake: True once it is complete, False if it needs input.

        Raises HandshakeError with OpenSSL's reason if the handshake failed;
        any alert explaining why is left in :meth:`bytes_to_send`.
        """
        if self._handshake_done:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
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
        try:
            self._conn.sendall(data)
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
            and not _ossl.plaintext_buffered(conn)
            and not _ossl.ciphertext_buffered(conn)
        ):
            return None  # what recv would say, without the cost of its exception
        try:
            return conn.recv(max_bytes)
        except SSL.WantReadError:
            return None
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
        return self._conn.pending()

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


def _client_connection(
    context: SSL.Context,
    server_hostname: str | None,
    check_hostname: bool,
    session: SSL.Session | None,
) -> SSL.Connection:
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


# -- DTLS -------------------------------------------------------------------------

_DTLS_RECORD_HEADER = 13


def split_records(data: bytes) -> list[bytes]:
    """Split OpenSSL's own DTLS output into records.

    The memory BIO is a byte stream, so the datagram boundaries OpenSSL had
    in mind are gone; the records themselves carry their lengths. This
    parses only what our own OpenSSL wrote (trusted input).
    """
    records = []
    view = memoryview(data)
    offset = 0
    while offset + _DTLS_RECORD_HEADER <= len(data):
        end = offset + _DTLS_RECORD_HEADER + int.from_bytes(view[offset + 11 : offset + 13], "big")
        records.append(data[offset:end])
        offset = end
    if offset != len(data):  # pragma: no cover - OpenSSL never writes half a record
        raise TLSError("internal error: OpenSSL wrote a partial DTLS record")
    return records


def pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    """Pack whole records into as few datagrams of at most *mtu* bytes as possible.

    A record larger than the MTU (OpenSSL keeps handshake records under it,
    and we refuse oversized application data) travels alone.
    """
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and size + len(record) > mtu:
            datagrams.append(b"".join(current))
            current, size = [], 0
        current.append(record)
        size += len(record)
    if current:
        datagrams.append(b"".join(current))
    return datagrams


class DTLSEngine(TLSEngine):
    """A DTLS 1.2 engine: datagrams in, datagrams out, OpenSSL's retransmit timer.

    Each received datagram must be fed with :meth:`receive_datagram` and
    processed (handshake step or :meth:`receive_messages`) before the next,
    because the memory BIO would otherwise merge them into one "packet".
    """

    __slots__ = ("mtu",)
    _name = "DTLS"
    _skip_empty_reads = False

    def __init__(self, conn: SSL.Connection, *, server_side: bool, mtu: int) -> None:
        super().__init__(conn, server_side=server_side)
        self.mtu = mtu
        # OpenSSL fragments handshake messages to this size; OP_NO_QUERY_MTU
        # (set on our DTLS contexts) stops it asking the memory BIO instead.
        conn.set_ciphertext_mtu(mtu)

    @classmethod
    def accept(cls, context: SSL.Context, client_hello: bytes, *, mtu: int) -> DTLSEngine:
        """A server engine for a ClientHello whose cookie *the caller* has verified.

        ``DTLSv1_listen`` sets up the record and message sequence numbers to
        follow on from the HelloVerifyRequest exchange; the context's cookie
        callbacks accept any cookie because ours was checked first (see
        :mod:`trio_tls_dtls.core.contexts`). Raises HandshakeError if OpenSSL
        rejects the ClientHello.
        """
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        engine = cls(conn, server_side=True, mtu=mtu)
        if not client_hello:
            # A memory BIO refuses a zero-length write with a bare SSL.Error.
            raise HandshakeError("an empty datagram is not a ClientHello", reason="empty datagram")
        conn.bio_write(client_hello)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            raise HandshakeError(
                "ClientHello without a cookie reached DTLSv1_listen", reason="no cookie"
            ) from None
        except SSL.Error as exc:
            reason = openssl_reason(exc)
            raise HandshakeError(f"bad ClientHello: {reason}", reason=reason) from exc
        return engine

    @classmethod
    def connect(
        cls,
        context: SSL.Context,
        server_hostname: str | None = None,
        *,
        mtu: int,
        check_hostname: bool = True,
        session: SSL.Session | None = None,
    ) -> DTLSEngine:
        """A client engine (see :meth:`TLSEngine.client` for the arguments)."""
        conn = _client_connection(context, server_hostname, check_hostname, session)
        return cls(conn, server_side=False, mtu=mtu)

    # -- datagrams -----------------------------------------------------------

    def receive_datagram(self, datagram: bytes) -> None:
        """Feed one datagram received from the peer.

        An empty datagram carries no record and is ignored (a memory BIO
        would refuse it with an OpenSSL error).
        """
        if datagram:
            self._conn.bio_write(datagram)

    def datagrams_to_send(self) -> list[bytes]:
        """Everything OpenSSL wrote, as datagrams of at most :attr:`mtu` bytes."""
        data = self.bytes_to_send()
        if not data:
            return []
        return pack_datagrams(split_records(data), self.mtu)

    @property
    def max_message_size(self) -> int:
        """The largest application datagram that fits in one record at this MTU."""
        return self._conn.get_cleartext_mtu()

    def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Encrypt one application datagram into one record."""
        if not message:
            raise ValueError("DTLS cannot send an empty datagram")
        limit = self.max_message_size
        if len(message) > limit:
            raise DatagramTooLargeError(
                f"a {len(message)}-byte datagram does not fit in one DTLS record at "
                f"MTU {self.mtu} (at most {limit} bytes)"
            )
        self.send(message)

    def receive_messages(self) -> list[bytes]:
        """All application datagrams decrypted from what was fed so far.

        Returns [] when there are none (a duplicate, a late handshake
        record, or a record that failed authentication, which DTLS drops
        silently). After the peer's close_notify, :attr:`peer_closed` is true.
        """
        messages: list[bytes] = []
        while True:
            data = self.receive(65536)
            if not data:
                return messages
            messages.append(data)

    # -- retransmission timer ------------------------------------------------

    def timeout(self) -> float | None:
        """Seconds until OpenSSL wants :meth:`handle_timeout` called, or None."""
        return self._conn.DTLSv1_get_timeout()

    def handle_timeout(self) -> bool:
        """Let OpenSSL retransmit its last flight if its timer expired.

        Returns True if it did (the flight is in :meth:`datagrams_to_send`).
        Raises HandshakeError once OpenSSL gives up (too many retransmits).
        """
        try:
            return self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            reason = openssl_reason(exc)
            raise HandshakeError(f"DTLS retransmission failed: {reason}", reason=reason) from exc
