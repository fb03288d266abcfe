"""The sans-IO DTLS 1.2 engine: datagrams in, datagrams out, OpenSSL's retransmit timer.

:class:`DTLSEngine` is a :class:`~.tls_engine.TLSEngine` whose memory BIOs
carry datagrams. The memory BIO is a byte stream, so the datagram
boundaries OpenSSL had in mind are lost on the way out; :func:`split_records`
recovers the records (they carry their lengths) and :func:`pack_datagrams`
packs them into datagrams of at most the MTU. On the way in, each datagram
must be processed before the next is fed, or OpenSSL would read two
datagrams as one.
"""

from __future__ import annotations

from OpenSSL import SSL

from . import ssl_calls
from .errors import DatagramTooLargeError, HandshakeError, TLSError
from .tls_engine import TLSEngine, client_connection, openssl_reason

__all__ = ["DTLSEngine", "count_records", "pack_datagrams", "split_records"]

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


def count_records(datagram: bytes) -> int:
    """The whole DTLS records in a datagram from the peer, as OpenSSL will frame them.

    A record whose length runs past the end is not counted: OpenSSL drops
    the rest of the datagram there too.
    """
    count = offset = 0
    size = len(datagram)
    while offset + _DTLS_RECORD_HEADER <= size:
        offset += _DTLS_RECORD_HEADER + int.from_bytes(datagram[offset + 11 : offset + 13], "big")
        if offset > size:
            break
        count += 1
    return count


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

    __slots__ = ("_data_mtu", "_records_fed", "_timer_stopped", "mtu")
    _name = "DTLS"
    _skip_empty_reads = False

    def __init__(self, conn: SSL.Connection, *, server_side: bool, mtu: int) -> None:
        super().__init__(conn, server_side=server_side)
        self.mtu = mtu
        self._data_mtu = 0  # max_message_size, once the handshake fixed the cipher
        self._timer_stopped = False
        # Whole records fed by receive_datagram since receive_messages last
        # ran (-1: unknown, something else fed bytes). Counting too many
        # costs one read; too few would leave a message behind, so anything
        # else that feeds makes it unknown.
        self._records_fed = 0
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
        ssl_calls.feed(conn, client_hello)
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
        conn = client_connection(context, server_hostname, check_hostname, session)
        return cls(conn, server_side=False, mtu=mtu)

    # -- datagrams -----------------------------------------------------------

    def receive_datagram(self, datagram: bytes) -> None:
        """Feed one datagram received from the peer.

        An empty datagram carries no record and is ignored (a memory BIO
        would refuse it with an OpenSSL error).
        """
        if datagram:
            ssl_calls.feed(self._conn, datagram)
            if self._records_fed >= 0:
                self._records_fed += count_records(datagram)

    def receive_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext that may hold any number of records (prefer :meth:`receive_datagram`)."""
        self._records_fed = -1
        super().receive_bytes(data)

    def datagrams_to_send(self) -> list[bytes]:
        """Everything OpenSSL wrote, as datagrams of at most :attr:`mtu` bytes."""
        data = self.bytes_to_send()
        if not data:
            return []
        if len(data) <= self.mtu:
            return [data]  # what packing its records would make: one datagram
        return pack_datagrams(split_records(data), self.mtu)

    @property
    def max_message_size(self) -> int:
        """The largest application datagram that fits in one record at this MTU."""
        if self._data_mtu:
            return self._data_mtu
        size: int = self._conn.get_cleartext_mtu()
        if self._handshake_done:  # the cipher, and so the record overhead, is fixed now
            self._data_mtu = size
        return size

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
        # Each message is one whole record fed (a record's plaintext fits
        # the read), so once every record fed has given one, the next read
        # could only say "need input": skip it.
        left = self._records_fed
        self._records_fed = 0
        while left:
            data = self.receive(ssl_calls.MAX_RECORD_PLAINTEXT)
            if not data:
                break
            messages.append(data)
            left -= 1
        return messages

    # -- retransmission timer ------------------------------------------------

    def timeout(self) -> float | None:
        """Seconds until OpenSSL wants :meth:`handle_timeout` called, or None."""
        if self._timer_stopped:
            return None
        timeout: float | None = self._conn.DTLSv1_get_timeout()
        if timeout is None and self._handshake_done:
            # After the handshake nothing restarts the timer (renegotiation
            # is off on our contexts; a lost final flight is resent when the
            # peer's retransmission arrives, not on a timer): stop asking.
            self._timer_stopped = True
        return timeout

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
