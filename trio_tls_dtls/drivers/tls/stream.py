"""TLSStream: a ``trio.abc.Stream`` that runs the sans-IO engine over any Trio stream.

The concurrency contract, which everything below exists to keep:

* ``trio.abc.Stream`` allows one task in ``send_all`` (or
  ``wait_send_all_might_not_block``) and one task in ``receive_some`` at the
  same time; a second caller of either gets ``BusyResourceError``.
* Both directions share one OpenSSL object. Every engine call goes through
  the stream's :class:`~trio_tls_dtls.drivers.engine_guard.EngineGuard`,
  which keeps it to one thread at a time and decides which calls run in a
  worker thread (a costly handshake step, a very large record).
* Ciphertext must reach the transport in the order the engine produced it,
  but both directions produce some (``receive_some`` can owe the peer an
  alert or a KeyUpdate reply). So bytes leave the engine only while holding
  ``_send_lock``, and whoever holds it drains the engine until it is empty:
  bytes queued by another task meanwhile go out in the same loop.
* Cancellation: a cancelled ``receive_some`` loses nothing (Trio streams
  return no data when cancelled, and the engine keeps what it has). A
  ``send_all`` cancelled after its data entered the engine cannot know how
  much reached the peer, so it marks the stream broken: later calls raise
  ``BrokenResourceError`` rather than silently duplicating or dropping bytes.
* A failed or cancelled transport send breaks only the sending direction:
  what the peer sent before it went away can still be read. (A TLS 1.3
  client that sends its request and closes at once leaves the server unable
  to deliver its session tickets; the request must still be readable.)
"""

from __future__ import annotations

import contextlib
import enum
import operator
import os
from collections.abc import Callable
from functools import partial
from typing import NoReturn

import trio
from OpenSSL import SSL

from ...core.engine import TLSEngine
from ...core.errors import HandshakeError, TLSError
from ...core.peer_info import Address, PeerInfo
from ..conflict_detector import ConflictDetector, Turn
from ..engine_guard import EngineGuard
from ..offload import CryptoOffload

__all__ = ["TLSStream"]

DEFAULT_RECEIVE_SIZE = 64 * 1024


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class TLSStream(trio.abc.Stream):
    """TLS over *transport_stream*, driven by *engine*.

    Servers get these from :func:`~trio_tls_dtls.serve_tls` and clients from
    :func:`~trio_tls_dtls.open_tls_stream`; build one directly only to run
    TLS over an unusual transport. The handshake happens on the first
    ``send_all``/``receive_some`` or an explicit :meth:`do_handshake`.
    *initial_data* is ciphertext already read from *transport_stream* (for
    example what followed a PROXY protocol header); it is processed first.

    ``aclose`` sends close_notify (if it can without waiting for another
    task) and closes the transport; it does not wait for the peer's reply.
    A peer that closes without close_notify makes ``receive_some`` raise
    ``BrokenResourceError`` (a truncation attack looks exactly like that).
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        engine: TLSEngine,
        *,
        offload: CryptoOffload | None = None,
        peer_address: Address | None = None,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        on_activity: Callable[[], None] | None = None,
        initial_data: bytes | bytearray | memoryview = b"",
    ) -> None:
        self.transport_stream = transport_stream
        self.peer_address = peer_address
        # Over a plain socket, a read or write that can complete at once is
        # one system call on its descriptor (see _transport_send); trio's
        # wrappers are used only to wait, and to report errors.
        self._direct_socket = (
            transport_stream.socket if isinstance(transport_stream, trio.SocketStream) else None
        )
        self._engine = engine
        # Ciphertext already read from the transport (after a PROXY header):
        # the engine takes it before anything the socket holds.
        engine.receive_bytes(initial_data)
        self._guard = EngineGuard(engine, offload)
        self._receive_size = receive_size
        self.on_activity = on_activity
        """Called when application data moves: a ``receive_some`` returns (data, or
        b"" after the peer's close_notify) or a ``send_all`` completes. The
        server's idle deadline uses it. Ciphertext alone never calls it: a
        record trickled a byte at a time, or one that carries no data
        (KeyUpdate, session tickets), is not activity."""
        self._state = _State.OK
        self._send_broken = False
        self._handshake_done = False
        self._info: PeerInfo | None = None
        self._handshake_lock: Turn | None = Turn()
        self._send_lock = Turn()
        self._send_conflict = ConflictDetector("another task is already sending on this TLSStream")
        self._receive_conflict = ConflictDetector(
            "another task is already receiving on this TLSStream"
        )
        self.bytes_sent = 0
        """Plaintext bytes accepted by ``send_all`` so far."""
        self.bytes_received = 0
        """Plaintext bytes returned by ``receive_some`` so far."""

    # -- public information ------------------------------------------------

    @property
    def info(self) -> PeerInfo:
        """What the handshake negotiated; raises if it has not finished."""
        if self._info is None:
            raise RuntimeError("the TLS handshake has not completed yet")
        return self._info

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def peer_closed(self) -> bool:
        """True once the peer's close_notify has been read."""
        return self._engine.peer_closed

    @property
    def session(self) -> SSL.Session | None:
        """The session to pass to a later client connection to resume it.

        With TLS 1.3 the server sends tickets after the handshake, so this
        is only resumable once some data has been received.
        """
        return self._engine.session

    # -- internals -------------------------------------------------------------

    def _check_usable(self, *, sending: bool = False) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLSStream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this TLSStream is broken")
        if sending and self._send_broken:
            raise trio.BrokenResourceError("this TLSStream can no longer send")

    def _activity(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    # -- moving ciphertext -------------------------------------------------

    def _owes_bytes(self) -> bool:
        """True if the engine may hold bytes for the peer that we may send now.

        (A send in progress takes them itself. While a thread holds the engine, it may.)
        """
        if self._send_lock.locked() or self._send_broken:
            return False
        return self._guard.busy or self._engine.has_bytes_to_send

    async def _flush(self) -> None:
        """Send everything the engine has queued, in order (see module docstring)."""
        turn = self._send_lock
        if not turn.take_now():
            await turn.take()
        try:
            engine = self._engine
            guard = self._guard
            while True:
                # Inline calls run directly unless a thread holds the engine.
                data = (
                    await guard.inline(engine.bytes_to_send)
                    if guard.busy
                    else engine.bytes_to_send()
                )
                if not data:
                    return
                if not await self._transport_send(data):
                    return  # sent without yielding: nobody queued more meanwhile
        finally:
            turn.give_back()

    async def _transport_send(self, data: bytes) -> bool:
        """Send *data*; whether we waited (and so other tasks may have run)."""
        sock = self._direct_socket
        if sock is not None and (fd := sock.fileno()) >= 0:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:  # trio's send waits for room
                sent = 0
            except OSError as exc:  # reset, or the peer is gone: no need to ask trio again
                self._send_broken = True
                self._raise_send_failed(exc)
            if sent == len(data):
                return False
            data = data[sent:]
        try:
            await self.transport_stream.send_all(data)
        except BaseException as exc:
            # Some unknown prefix of `data` may have gone out: nothing can
            # be sent after it safely.
            self._send_broken = True
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                self._raise_send_failed(exc)
            raise
        return True

    def _raise_send_failed(self, exc: BaseException) -> NoReturn:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLSStream was closed") from exc
        raise trio.BrokenResourceError(f"transport failed while sending: {exc}") from exc

    def _release_grown_buffers(self) -> None:
        """Before waiting for the peer: give back the BIO memory a large read or send left."""
        engine = self._engine
        if engine.buffers_grown and not self._guard.busy:
            engine.release_buffers()

    async def _receive_into_engine(self, max_bytes: int | None = None) -> tuple[int, bool]:
        """Read one chunk of ciphertext into the engine: its size, and whether we yielded.

        Over a plain socket this reads the descriptor, and waits for it to
        become readable, itself: waiting inside ``SocketStream.receive_some``
        would park five more frames and context managers per idle connection
        (per-connection memory). trio's receive is used without a plain
        socket, and after a failed read so that trio reports the failure.
        """
        size = max_bytes or self._receive_size
        data: bytes | bytearray | None = None
        waited = False
        sock = self._direct_socket
        while sock is not None and (fd := sock.fileno()) >= 0:
            try:
                data = os.read(fd, size)
                break
            except BlockingIOError:
                pass
            except OSError:
                break
            waited = True
            self._release_grown_buffers()
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("this TLSStream was closed") from None
        if data is None:
            waited = True
            self._release_grown_buffers()
            try:
                data = await self.transport_stream.receive_some(size)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("this TLSStream was closed") from None
            except trio.BrokenResourceError:
                if self._state is _State.OK:
                    self._state = _State.BROKEN
                raise
        engine = self._engine
        if self._guard.busy:
            await self._guard.inline(
                partial(engine.receive_bytes, data) if data else engine.receive_eof
            )
        elif data:
            engine.receive_bytes(data)
        else:
            engine.receive_eof()
        return len(data), waited

    # -- handshake -------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake now, if it has not run yet.

        Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` if it fails
        (including the peer going away mid-handshake), with OpenSSL's reason.
        The caller sets the deadline (servers and ``open_tls_stream`` do).
        """
        self._check_usable()
        turn = self._handshake_lock
        if self._handshake_done or turn is None:  # done (and the turn dropped)
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        if not turn.take_now():
            await turn.take()
        try:
            # Another task may have finished (or failed) it while we waited.
            self._check_usable()
            if not self._handshake_done:
                await self._handshake_or_raise()
                self._handshake_lock = None  # later callers see _handshake_done first
        finally:
            turn.give_back()

    async def _handshake_or_raise(self) -> None:
        try:
            await self._handshake_steps()
        except HandshakeError:
            self._state = _State.BROKEN
            await self._send_alert()
            raise
        except trio.BrokenResourceError as exc:
            self._state = _State.BROKEN
            raise HandshakeError(
                f"connection lost during the handshake: {exc}",
                reason="connection lost during the handshake",
            ) from exc

    async def _handshake_steps(self) -> None:
        guard = self._guard
        while not await guard.handshake_step():
            await self._flush()
            await self._receive_into_engine()
        # The handshake is complete even if what follows it (TLS 1.3
        # session tickets) cannot be delivered: the peer may have sent its
        # data and gone. Sending is then broken; receiving is not.
        with _suppress_transport_errors():
            await self._flush()
        if not guard.busy:  # the BIOs would keep the ClientHello's and the flight's buffers
            self._engine.release_buffers()
        self._info = self._engine.peer_info(self.peer_address)
        self._handshake_done = True

    async def _send_alert(self) -> None:
        """Best effort: send the fatal alert the engine queued when it failed."""
        if self._send_lock.locked() or self._send_broken:
            return
        data = await self._guard.inline(self._engine.bytes_to_send)
        if data:
            with trio.move_on_after(1.0), _suppress_transport_errors():
                await self.transport_stream.send_all(data)

    async def _implicit_handshake(self) -> None:
        try:
            await self.do_handshake()
        except HandshakeError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    # -- trio.abc.Stream ---------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_usable(sending=True)
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshake_done:
                await self._implicit_handshake()
                self._check_usable(sending=True)
            if not data:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            guard = self._guard
            try:
                if guard.busy or guard.offloads_records(len(data)):
                    await guard.record(partial(self._engine.send, data), len(data))
                else:
                    self._engine.send(data)  # the common case, without a coroutine
            except TLSError as exc:
                self._state = _State.BROKEN
                raise trio.BrokenResourceError(str(exc)) from exc
            try:
                await self._flush()
            except BaseException:
                # Our data is in the engine; whether it left is unknown.
                self._send_broken = True
                raise
            self.bytes_sent += len(data)
            self._activity()
            # The socket may have taken the bytes without waiting; a send is
            # still a schedule point.
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_usable(sending=True)
            # A receive_some may be flushing an alert; wait for it rather
            # than report a conflict the caller did not cause.
            await self._send_lock.take()
            try:
                await self.transport_stream.wait_send_all_might_not_block()
            finally:
                self._send_lock.give_back()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receive_conflict:
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be at least 1")
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshake_done:
                await self._implicit_handshake()
            data, yielded = await self._receive_plaintext(max_bytes)
            if self._owes_bytes():
                # Reading may have queued bytes for the peer (an alert, a
                # KeyUpdate reply). If a send is in progress, its flush loop
                # takes them; otherwise send them now.
                await self._flush()
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self.bytes_received += len(data)
            self._activity()
            return data

    async def _receive_plaintext(self, max_bytes: int) -> tuple[bytes, bool]:
        """Plaintext from the engine, reading the transport as needed; and whether we yielded.

        A caller asking for a lot (``max_bytes`` at or above the offload
        threshold) reads that much ciphertext at once, and if that much
        arrived, all of it is decrypted in one worker-thread call.
        """
        engine = self._engine
        yielded = False
        big_reads = self._guard.offloads_records(max_bytes)
        read_size = max(self._receive_size, max_bytes) if big_reads else self._receive_size
        # Ciphertext fed since the last attempt, if this read may go to a
        # thread at all: small reads never do, whatever arrived. (Locals
        # here stay alive while an idle connection waits: keep them few.)
        fed = 0
        guard = self._guard
        while True:
            try:
                if guard.busy or (fed and guard.offloads_records(fed)):
                    data = await guard.record(
                        partial(engine.receive, max_bytes),
                        fed,
                        in_thread=partial(engine.receive_many, max_bytes) if fed else None,
                    )
                else:
                    data = engine.receive(max_bytes)  # the common case, without a coroutine
            except TLSError as exc:
                self._state = _State.BROKEN
                await self._send_alert()
                raise trio.BrokenResourceError(str(exc)) from exc
            if data is not None:
                return data, yielded
            if self._owes_bytes():
                # Reading may have queued bytes that the peer waits for before
                # it sends anything more (a refused renegotiation's alert).
                await self._flush()
            fed, waited = await self._receive_into_engine(read_size)
            yielded = yielded or waited
            if not big_reads:
                fed = 0

    async def aclose(self) -> None:
        """Send close_notify if possible, then close the transport."""
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        polite = (
            self._state is _State.OK
            and not self._send_broken
            and self._handshake_done
            and not self._send_lock.locked()
            and not self._guard.busy
        )
        self._state = _State.CLOSED
        try:
            if polite:
                self._engine.close()
                with _suppress_transport_errors():
                    await self._flush()
        finally:
            await self.transport_stream.aclose()

    async def send_close_notify(self) -> None:
        """Send close_notify now but keep the stream open for reading.

        For a graceful drain: the peer sees the end of our data, and
        ``receive_some`` keeps returning what it still sends until its own
        close_notify (b"").
        """
        with self._send_conflict:
            self._check_usable(sending=True)
            await self._guard.inline(self._engine.close)
            await self._flush()


def _suppress_transport_errors() -> contextlib.suppress:
    """Ignore a transport that is already gone while saying goodbye."""
    return contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
