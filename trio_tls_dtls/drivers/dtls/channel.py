"""DTLSChannel: a ``trio.abc.Channel[bytes]`` of datagrams over the DTLS engine.

One ``send`` is one record is one datagram; one ``receive`` returns one
datagram the peer sent. Record boundaries are preserved, order and delivery
are not (that is what DTLS is): a lost datagram is simply never received.

Retransmission is OpenSSL's. While a handshake is in progress we wait for
the next datagram *or* for OpenSSL's DTLS timer
(``DTLSv1_get_timeout``), whichever comes first; when the timer fires,
``DTLSv1_handle_timeout`` puts the last flight back in the outgoing BIO and
we send it again. OpenSSL doubles the timer on each retry.

Concurrency: one task may ``send`` while another ``receive``\\ s; two
concurrent receivers (or senders) get ``BusyResourceError``. The handshake
may run in a worker thread: every engine call goes through the channel's
:class:`~trio_tls_dtls.drivers.engine_guard.EngineGuard`, which decides what
runs in a thread and keeps every other engine call off the SSL object
meanwhile. Cancellation is safe everywhere: a cancelled
receive has taken nothing from the link, and a cancelled send at worst loses
that one datagram, which DTLS tolerates by design.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from functools import partial

import trio
from OpenSSL import SSL

from ...core.engine import DTLSEngine
from ...core.errors import HandshakeError, TLSError
from ...core.peer_info import Address, PeerInfo
from ..conflict_detector import ConflictDetector
from ..engine_guard import EngineGuard
from ..offload import CryptoOffload
from .link import DatagramLink

__all__ = ["DTLSChannel"]


class DTLSChannel(trio.abc.Channel[bytes]):
    """DTLS 1.2 over a datagram link.

    Servers get these from :func:`~trio_tls_dtls.serve_dtls`, clients from
    :func:`~trio_tls_dtls.open_dtls_channel`. ``send`` raises
    :class:`~trio_tls_dtls.core.errors.DatagramTooLargeError` for a datagram that
    does not fit in one record at the MTU (see :attr:`max_message_size`).
    ``receive`` raises ``trio.EndOfChannel`` after the peer's close_notify.
    """

    def __init__(
        self,
        link: DatagramLink,
        engine: DTLSEngine,
        *,
        offload: CryptoOffload | None = None,
        peer_address: Address | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.peer_address = peer_address
        self.on_activity = on_activity
        """Called when application data moves: a ``receive`` returns (a datagram,
        or the end after the peer's close_notify) or a ``send`` completes. The
        server's idle deadline uses it; datagrams that carry no data (handshake
        retransmissions, records that fail authentication) never call it."""
        self._link = link
        self._engine = engine
        self._guard = EngineGuard(engine, offload)
        # Lists, not deques: a deque allocates a 64-slot block at once.
        self._inbox: list[bytes] = []
        self._handshake_done = False
        self._info: PeerInfo | None = None
        self._closed = False
        self._broken: str | None = None
        self._handshake_lock = trio.Lock()
        self._goodbye: list[bytes] | None = None  # our close_notify, to send again
        self._send_conflict = ConflictDetector("another task is already sending on this channel")
        self._receive_conflict = ConflictDetector(
            "another task is already receiving on this channel"
        )
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.bytes_sent = 0
        """Plaintext bytes sent."""
        self.bytes_received = 0
        """Plaintext bytes received."""

    # -- information ---------------------------------------------------------

    @property
    def info(self) -> PeerInfo:
        """What the handshake negotiated; raises if it has not finished."""
        if self._info is None:
            raise RuntimeError("the DTLS handshake has not completed yet")
        return self._info

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def local_address(self) -> Address | None:
        """Our end of the association: the UDP socket's (host, port), or None if closed.

        On a server bound to a wildcard address this is the wildcard
        (``0.0.0.0`` or ``::``) with the port.
        """
        return self._link.local_address

    @property
    def peer_closed(self) -> bool:
        """True once the peer's close_notify has been read."""
        return self._engine.peer_closed

    @property
    def max_message_size(self) -> int:
        """The largest datagram :meth:`send` accepts at the current MTU."""
        return self._engine.max_message_size

    @property
    def session(self) -> SSL.Session | None:
        return self._engine.session

    # -- internals -------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this DTLS channel was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _activity(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    async def _flush(self) -> None:
        """Send every datagram the engine has queued.

        The whole flight goes out in one loop with no schedule point while
        the socket takes each datagram at once (a server's nearly always).
        """
        guard = self._guard
        if guard.busy:
            datagrams = await guard.inline(self._engine.datagrams_to_send)
        else:
            datagrams = self._engine.datagrams_to_send()
        if not datagrams:
            return
        link = self._link
        send_nowait = getattr(link, "send_nowait", None)  # optional (see DatagramLink)
        for datagram in datagrams:
            if send_nowait is None or not send_nowait(datagram):
                await link.send(datagram)
            self.datagrams_sent += 1

    async def _next_datagram(self, deadline: float) -> bytes | None:
        """The next datagram from the peer, or None if *deadline* passed first."""
        if deadline == math.inf:
            # An idle peer waits with no timer: no cancel scope then (each
            # one is a few hundred bytes of per-peer memory).
            return await self._take_datagram()
        with trio.CancelScope(deadline=deadline):
            return await self._take_datagram()
        return None

    async def _take_datagram(self) -> bytes:
        try:
            datagram = await self._link.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError("the DTLS peer was replaced or removed") from None
        except ConnectionRefusedError as exc:
            raise trio.BrokenResourceError(
                "the peer's UDP port is unreachable: nothing is listening there"
            ) from exc
        except (trio.ClosedResourceError, OSError) as exc:
            raise trio.BrokenResourceError(f"datagram link failed: {exc}") from exc
        self.datagrams_received += 1
        return datagram

    def _timer_deadline(self) -> float:
        timeout = self._engine.timeout()
        return math.inf if timeout is None else trio.current_time() + timeout

    async def _on_timer(self) -> None:
        """OpenSSL's retransmit timer fired: let it resend its last flight."""
        if await self._guard.inline(self._engine.handle_timeout):
            await self._flush()

    # -- handshake -------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake now, if it has not run yet; retransmits as OpenSSL says.

        Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` on failure. The
        caller sets the overall deadline (servers and ``open_dtls_channel`` do).
        """
        self._check_usable()
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        async with self._handshake_lock:
            self._check_usable()
            if not self._handshake_done:
                try:
                    await self._handshake_steps()
                except (HandshakeError, trio.BrokenResourceError) as exc:
                    self._broken = f"DTLS handshake failed: {exc}"
                    if isinstance(exc, HandshakeError):
                        await self._flush_best_effort()
                        raise
                    raise HandshakeError(str(exc), reason="link failed") from exc

    async def _handshake_steps(self) -> None:
        engine = self._engine
        guard = self._guard
        while True:
            done = await guard.handshake_step()
            await self._flush()
            if done:
                break
            datagram = None
            while datagram is None:
                datagram = await self._next_datagram(self._timer_deadline())
                if datagram is None:
                    await self._on_timer()
            await guard.inline(partial(engine.receive_datagram, datagram))
        if not guard.busy:
            engine.release_buffers()  # the flights' buffers, kept by the BIOs otherwise
        self._info = engine.peer_info(self.peer_address, transport="dtls")
        self._handshake_done = True

    async def _flush_best_effort(self) -> None:
        """Send what is queued (an alert, close_notify) if the link allows, briefly."""
        with (
            trio.move_on_after(1.0),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self._flush()

    # -- trio.abc.Channel --------------------------------------------------------

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one datagram."""
        with self._send_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshake_done:
                await self._implicit_handshake()
            guard = self._guard
            try:
                if guard.busy:
                    await guard.inline(partial(self._engine.send_message, value))
                else:
                    self._engine.send_message(value)
            except TLSError as exc:
                self._broken = str(exc)
                raise trio.BrokenResourceError(str(exc)) from exc
            try:
                await self._flush()
            except (trio.ClosedResourceError, OSError) as exc:
                if self._closed:
                    raise trio.ClosedResourceError("this DTLS channel was closed") from exc
                raise trio.BrokenResourceError(f"datagram send failed: {exc}") from exc
            self.bytes_sent += len(value)
            self._activity()
            # A server's link sends without yielding when the kernel takes the
            # datagram at once; a send is still a schedule point.
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        """The next datagram from the peer."""
        with self._receive_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshake_done:
                await self._implicit_handshake()
            yielded = False
            while not self._inbox:
                if self._engine.peer_closed:
                    self._activity()
                    raise trio.EndOfChannel
                yielded = True
                await self._receive_more()
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            message = self._inbox.pop(0)
            self.bytes_received += len(message)
            self._activity()
            return message

    async def _receive_more(self) -> None:
        """Take one datagram from the link (or serve the timer) and decrypt it."""
        try:
            datagram = await self._next_datagram(self._timer_deadline())
        except trio.BrokenResourceError:
            if self._closed:
                raise trio.ClosedResourceError("this DTLS channel was closed") from None
            raise
        if datagram is None:
            await self._on_timer()
            return
        try:
            # One datagram is at most one 16 KiB record: always cheaper than
            # a thread hop, so DTLS records never ask guard.record.
            if self._guard.busy:
                messages = await self._guard.inline(partial(self._decrypt, datagram))
            else:
                messages = self._decrypt(datagram)
        except TLSError as exc:
            self._broken = str(exc)
            raise trio.BrokenResourceError(str(exc)) from exc
        # The messages are ours now; only then may we yield again.
        self._inbox.extend(messages)
        # Reading may owe the peer something: our final flight again, if it
        # retransmitted its own because ours was lost; or an alert.
        if not self._closed:
            await self._flush()

    def _decrypt(self, datagram: bytes) -> list[bytes]:
        self._engine.receive_datagram(datagram)
        return self._engine.receive_messages()

    async def _implicit_handshake(self) -> None:
        try:
            await self.do_handshake()
        except HandshakeError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_close_notify(self) -> None:
        """Send close_notify now but keep receiving (for a graceful drain).

        The peer learns we are done; ``receive`` keeps returning what it
        still sends until its own close_notify (``trio.EndOfChannel``).
        Called again, it sends the same datagram again: UDP may have lost
        it, and a peer that had it drops the copy (DTLS replay protection).
        """
        with self._send_conflict:
            self._check_usable()
            if not self._handshake_done:
                raise trio.BrokenResourceError("no DTLS session to close yet")
            if self._goodbye is None:
                await self._guard.inline(self._engine.close)
                self._goodbye = await self._guard.inline(self._engine.datagrams_to_send)
            with (
                trio.move_on_after(1.0),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                for datagram in self._goodbye:
                    await self._link.send(datagram)
                    self.datagrams_sent += 1

    async def aclose(self) -> None:
        """Send close_notify (best effort: it is one datagram) and release the link."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshake_done and self._broken is None and not self._guard.busy:
                self._engine.close()
                await self._flush_best_effort()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._link.close()
