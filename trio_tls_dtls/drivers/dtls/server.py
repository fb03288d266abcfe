"""The DTLS endpoint: one receive loop per UDP socket, a cookie gate, a peer table.

Every datagram goes first through the *cookie gate*,
:func:`~trio_tls_dtls.core.cookie_gate.decide`, a pure function of the
datagram, its source address, the time and what this endpoint knows (is
there a peer at that address, which ClientHello admitted it, are we
draining). This module only carries out the decision:

* ``Drop``: count it under its reason in ``stats.dropped``;
* ``Deliver``: put it in the known peer's bounded queue. A full queue drops
  the datagram (``queue_full``), exactly as a congested link would, so a
  slow or hostile peer can never stall the loop that serves everyone else;
* ``Reply``: send the HelloVerifyRequest (never larger than the ClientHello)
  and keep nothing;
* ``Admit``: the cookie proved the address, so apply the per-source limits,
  then make the OpenSSL connection, the peer-table entry and the task.

Each admitted peer's task runs the shared lifecycle (:mod:`..lifecycle`:
handshake with a deadline, handler with the idle deadline, close, close
record), the same as a TLS connection's.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio
from OpenSSL import SSL

from ...core.close_record import CloseSink
from ...core.cookie_gate import Admit, Deliver, Drop, Reply, decide
from ...core.dtls_cookie import CookieSecrets
from ...core.engine import DTLSEngine
from ...core.errors import HandshakeError
from ...core.latency_histogram import LatencyHistogram
from ...core.peer_info import Address, PeerInfo, format_address
from ...core.peer_table import PeerTable
from ...core.settings import ServerSettings
from ...core.source_limits import Refusal, SourceLimits
from ...core.ticket_keys import ServerContexts
from ..lifecycle import Lifecycle, Opened, Transport
from ..listeners import normalize_address, open_udp_sockets
from ..offload import CryptoOffload
from .channel import DTLSChannel
from .link import MAX_DATAGRAM, PeerLink, SocketSender

__all__ = ["DTLSHandler", "DTLSServer", "DTLSServerStats", "dtls_echo_handler", "serve_dtls"]

logger = logging.getLogger(__name__)

DTLSHandler = Callable[[DTLSChannel, PeerInfo], Awaitable[object]]
"""``async def handler(channel, peer)``: serve one DTLS peer after its handshake."""

# How long a peer may take to say goodbye (one close_notify datagram).
CLOSE_TIMEOUT = 1.0
# In a drain, how long a peer that has our close_notify gets to answer (or
# finish) before it is cut: it owes us nothing, and one that is gone never
# answers (see drivers/lifecycle.py).
GOODBYE_GRACE = 1.0

_TRANSPORT = Transport("DTLS", "peer", logger, CLOSE_TIMEOUT, goodbye_grace=GOODBYE_GRACE)

# Linux reports ICMP errors for earlier sends on unconnected UDP sockets as
# receive errors; they say nothing about this endpoint.
_ICMP_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})

# Datagrams taken from a socket per wake-up before yielding to other tasks.
_RECEIVE_BATCH = 32


@dataclass
class DTLSServerStats:
    """Counters for one DTLS endpoint (the metrics module exports these)."""

    datagrams_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    cookies_sent: int = 0
    cookies_verified: int = 0
    cookies_rejected: int = 0
    peers_active: int = 0
    peers_total: int = 0
    peers_evicted: int = 0
    peers_replaced: int = 0
    handshakes_ok: int = 0
    handshakes_failed: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    idle_timeouts: int = 0
    closed_by_reason: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    handshake_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Peer:
    """A peer-table entry: its queue, its task's cancel scope, its ClientHello.

    The one scope also carries the idle deadline (a second scope per peer
    would be a few hundred bytes more of per-peer memory); the lifecycle
    tells a cut (:meth:`stop`) from an idle timeout by that deadline.
    """

    __slots__ = ("channel", "hello_id", "link", "scope")

    def __init__(self, link: PeerLink, hello_id: bytes) -> None:
        self.link = link
        self.hello_id = hello_id
        self.scope = trio.CancelScope()
        self.channel: DTLSChannel | None = None

    def stop(self) -> None:
        """Cut it short and close its link: it sends nothing more, not even close_notify.

        For a peer replaced by a new handshake from its address (that
        address belongs to the new association now), and for the end of a
        drain's grace (our close_notify has gone out).
        """
        self.scope.cancel()
        self.link.close()

    def evict(self) -> None:
        """Cut it short; its close_notify still goes out as it closes.

        It has left the table, so no datagram reaches its queue any more; its
        own close closes the link after saying goodbye.
        """
        self.scope.cancel()


class DTLSServer:
    """Serves DTLS on UDP sockets it is given; see :func:`serve_dtls`.

    *context* is a Context to use as it is, or the
    :class:`~trio_tls_dtls.core.ticket_keys.ServerContexts` to make peers
    from (default: built from *settings*). *cookies* overrides the secrets
    built from *settings* (workers share one); *clock* is the wall clock the
    cookie epochs follow. *on_close*
    gets each peer's close record, as for
    :class:`~trio_tls_dtls.drivers.tls.server.TLSServer` (by default it is
    counted into :attr:`stats` and logged as the access line).
    """

    def __init__(
        self,
        handler: DTLSHandler,
        settings: ServerSettings,
        *,
        context: SSL.Context | ServerContexts | None = None,
        offload: CryptoOffload | None = None,
        cookies: CookieSecrets | None = None,
        clock: Callable[[], float] = time.time,
        on_close: CloseSink | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.contexts = (
            context
            if isinstance(context, ServerContexts)
            else ServerContexts(settings, dtls=True, context=context)
        )
        self.offload = offload if offload is not None else CryptoOffload(settings.offload)
        self.cookies = cookies if cookies is not None else cookie_secrets_for(settings)
        self.clock = clock
        self.stats = DTLSServerStats()
        self.peers: PeerTable[tuple[int, Address], _Peer] = PeerTable(settings.max_peers)
        self.sockets: list[trio.socket.SocketType] = []
        self.admitting = True
        """False once draining: no new peers, only the existing ones are served."""
        self._closing_senders: list[SocketSender] = []
        self.source_limits = SourceLimits.unless_off(
            rate=settings.per_source_rate,
            burst=settings.per_source_burst,
            max_connections=settings.per_source_connections,
            exempt=settings.per_source_exempt,
        )
        self.lifecycle = Lifecycle(
            _TRANSPORT, settings, handler, self.stats, on_close, open=self._open, left=self._left
        )
        """Each peer's life, from its handshake to its close record."""

    @property
    def context(self) -> SSL.Context:
        """The context new connections start from (the current ticket-key front).

        Read-only, kept for code written before :attr:`contexts`: a reload or a
        ticket-key rotation replaces what it returns.
        """
        return self.contexts.current

    @property
    def addresses(self) -> list[Address]:
        return [normalize_address(sock.getsockname()) for sock in self.sockets]

    async def serve(
        self,
        sockets: list[trio.socket.SocketType],
        *,
        task_status: trio.TaskStatus[DTLSServer] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Receive on *sockets* until cancelled; they are closed on the way out."""
        self.sockets = sockets
        try:
            async with trio.open_nursery() as nursery:
                for index, sock in enumerate(sockets):
                    nursery.start_soon(self._receive_loop, index, sock, nursery)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            # Peer tasks have ended with the nursery: nothing sends any more.
            for sender in self._closing_senders:
                sender.close()
            self._closing_senders.clear()
            for sock in sockets:
                sock.close()
        raise AssertionError("unreachable")  # pragma: no cover

    async def drain(self) -> None:
        """Admit no new peers, send close_notify to every peer, wait for handlers.

        Returns once every peer task has ended: a peer ends when it answers
        with its own close_notify or its handler returns, and a peer that
        has neither done within ``GOODBYE_GRACE`` (a second; our close_notify
        is sent again halfway) is cut, so a peer that has gone without a
        word never holds the drain. Bound it with ``trio.move_on_after``
        all the same; ``stats.peers_active`` tells how many were left, and
        cancelling :meth:`serve` cuts them.
        """
        self.admitting = False
        await self.lifecycle.drain(
            [(peer.channel, peer.stop) for peer in self.peers.values()],
            lambda: self.stats.peers_active,
        )

    # -- the receive loop ----------------------------------------------------------

    async def _receive_loop(
        self, index: int, sock: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        """Take what the socket holds, a batch at a time; wait only when it is empty.

        Datagrams are read with a plain ``recvfrom`` on a second handle to
        the socket (see :class:`~.link.SocketSender`), not through trio's
        wrapper. After each batch the loop yields once, so the peers whose
        datagrams it queued run; then it reads again, and waits for the
        socket only if that finds nothing. Under load, datagrams from other
        peers have arrived meanwhile, and the loop runs without an epoll
        registration per batch. A peer's task is woken only if it waits for
        a datagram (see :meth:`~.link.PeerLink.deliver`).
        """
        sender = SocketSender(sock)
        direct = sender.direct
        try:
            while True:
                try:
                    datagram, sockaddr = await sock.recvfrom(MAX_DATAGRAM)
                except OSError as exc:
                    if exc.errno not in _ICMP_ERRORS:
                        raise
                    continue
                # One clock reading per wake-up: a cookie epoch lasts a
                # minute, a batch a few milliseconds.
                now = self.clock()
                reply = self._on_datagram(index, datagram, sockaddr, now, sender, nursery)
                if reply is not None:
                    await self._send_hello_verify_request(*reply, sender)
                # Whatever else is already queued, without a trip through the
                # scheduler per datagram; the await above is the checkpoint.
                for _ in range(_RECEIVE_BATCH):
                    try:
                        datagram, sockaddr = direct.recvfrom(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno not in _ICMP_ERRORS:
                            raise
                        continue
                    reply = self._on_datagram(index, datagram, sockaddr, now, sender, nursery)
                    if reply is not None:
                        await self._send_hello_verify_request(*reply, sender)
        finally:
            self._closing_senders.append(sender)

    def _on_datagram(
        self,
        index: int,
        datagram: bytes,
        sockaddr: tuple[object, ...],
        now: float,
        sender: SocketSender,
        nursery: trio.Nursery,
    ) -> tuple[bytes, Address] | None:
        """Ask the cookie gate what to do with *datagram*, and do it.

        Returns the HelloVerifyRequest to send and where, for a ``Reply``
        (the caller sends it); None otherwise.
        """
        self.stats.datagrams_received += 1
        address = normalize_address(sockaddr)
        key = (index, address)
        peer = self.peers.get(key)
        decision = decide(
            datagram,
            address,
            now,
            self.cookies,
            known_hello_id=None if peer is None else peer.hello_id,
            admitting=self.admitting,
        )
        match decision:
            case Deliver():
                assert peer is not None  # the gate delivers only to a known peer
                self.peers.touch(key)
                if not peer.link.deliver(datagram):
                    self.stats.dropped["queue_full"] += 1
            case Drop(reason=reason):
                self.stats.dropped[reason] += 1
            case Reply(hello_verify_request=reply, cookie_rejected=rejected):
                if rejected:
                    self.stats.cookies_rejected += 1
                return reply, address
            case Admit():
                self.stats.cookies_verified += 1
                self._start_peer(key, datagram, decision, sender, nursery)
        return None

    async def _send_hello_verify_request(
        self, reply: bytes, address: Address, sender: SocketSender
    ) -> None:
        try:
            await sender.sendto(reply, address)
        except OSError as exc:
            logger.debug("HelloVerifyRequest to %s failed: %s", format_address(address), exc)
            return
        self.stats.cookies_sent += 1

    def _start_peer(
        self,
        key: tuple[int, Address],
        datagram: bytes,
        admit: Admit,
        sender: SocketSender,
        nursery: trio.Nursery,
    ) -> None:
        # Only now, after a valid cookie, is the source address proven: a
        # spoofed flood cannot spend another address's handshake tokens.
        limits = self.source_limits
        if limits is not None:
            # A new handshake from a known address and port replaces its old
            # peer: the source's count stays the same once that one ends.
            refused = limits.admit(key[1][0], trio.current_time(), replacing=admit.replaces_peer)
            if refused is not None:
                self._refuse(key[1], refused)
                return
        try:
            context = self.contexts.for_datagram(datagram)  # the front with its ticket's key
            engine = DTLSEngine.accept(context, datagram, mtu=self.settings.mtu)
        except HandshakeError as exc:
            self.stats.handshakes_failed[exc.reason] += 1
            if limits is not None:
                limits.release(key[1][0])
            return
        peer = _Peer(PeerLink(sender, key[1], self.settings.peer_queue_size), admit.hello_id)
        for old in self.peers.add(key, peer):
            if old.link.address == key[1]:
                self.stats.peers_replaced += 1
                logger.info(
                    "new handshake from %s replaces its old association", format_address(key[1])
                )
                old.stop()
            else:
                self.stats.peers_evicted += 1
                logger.info(
                    "peer table full: evicting idle peer %s", format_address(old.link.address)
                )
                old.evict()
        self.stats.peers_total += 1
        self.stats.peers_active += 1
        nursery.start_soon(self._peer_task, key, peer, engine)

    def _refuse(self, address: Address, why: Refusal) -> None:
        """Drop a valid ClientHello the per-source limits refuse; the client retries later."""
        self.stats.dropped[f"per_source_{why}"] += 1
        self.lifecycle.log_refusal(address, why, "DTLS peer")

    # -- one peer --------------------------------------------------------------------

    def _peer_task(
        self, key: tuple[int, Address], peer: _Peer, engine: DTLSEngine
    ) -> Coroutine[Any, Any, None]:
        """The task _start_peer starts for an admitted peer: its whole life (the lifecycle)."""
        return self.lifecycle.run((key, peer, engine))

    async def _open(self, ticket: _PeerTicket) -> Opened[DTLSChannel]:
        """The channel of a peer the cookie gate and the limits admitted."""
        key, peer, engine = ticket
        channel = DTLSChannel(peer.link, engine, offload=self.offload, peer_address=key[1])
        peer.channel = channel
        return channel, peer.scope, key[1]

    def _left(self, opened: Opened[DTLSChannel], ticket: _PeerTicket) -> None:
        """A peer is closing: it leaves the table (its address is a stranger's again)."""
        key, peer, _ = ticket
        self.peers.remove(key, peer)
        self.stats.peers_active -= 1
        if self.source_limits is not None:
            self.source_limits.release(key[1][0])


# What a peer's task starts with: its table key, its entry, its engine.
_PeerTicket = tuple[tuple[int, Address], _Peer, DTLSEngine]


def cookie_secrets_for(settings: ServerSettings) -> CookieSecrets:
    """The secrets from ``settings.cookie_secret_file``, or a random one for this process."""
    if settings.cookie_secret_file is not None:
        return CookieSecrets.from_file(
            settings.cookie_secret_file, rotation_interval=settings.cookie_rotation
        )
    return CookieSecrets.random(rotation_interval=settings.cookie_rotation)


async def dtls_echo_handler(channel: DTLSChannel, peer: PeerInfo) -> None:
    """Send back every datagram received until the peer closes."""
    async for message in channel:
        await channel.send(message)


async def serve_dtls(
    handler: DTLSHandler,
    port: int,
    *,
    host: str | None = None,
    settings: ServerSettings,
    offload: CryptoOffload | None = None,
    on_close: CloseSink | None = None,
    task_status: trio.TaskStatus[DTLSServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve DTLS 1.2 on UDP *host*:*port*, running ``await handler(channel, peer)`` per peer.

    ``nursery.start(serve_dtls, ...)`` returns the :class:`DTLSServer` once
    its sockets are bound. Runs until cancelled. *on_close* is where each
    peer's close record goes (see :class:`DTLSServer`). Raises
    :class:`~trio_tls_dtls.core.errors.ListenError` if it cannot bind and
    :class:`~trio_tls_dtls.core.errors.ConfigError` for bad settings or files.
    """
    server = DTLSServer(handler, settings, offload=offload, on_close=on_close)
    sockets = await open_udp_sockets(port, host)
    await server.serve(sockets, task_status=task_status)
