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
"""

from __future__ import annotations

import errno
import logging
import socket as _stdsocket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

import trio
from OpenSSL import SSL

from ...core.contexts import build_server_context
from ...core.cookie_gate import Admit, Deliver, Drop, Reply, decide
from ...core.dtls_cookie import CookieSecrets
from ...core.engine import DTLSEngine
from ...core.errors import HandshakeError
from ...core.peer_info import Address, PeerInfo, format_address
from ...core.peer_table import PeerTable
from ...core.settings import ServerSettings
from ...core.source_limits import LogThrottle, Refusal, SourceLimits
from ..close_accounting import LatencyHistogram, account_close, log_refusal
from ..idle_deadline import IdleDeadline
from ..listeners import listen_error, normalize_address, validate_port
from ..offload import CryptoOffload
from .channel import DTLSChannel
from .link import MAX_DATAGRAM, PeerLink, SocketSender

__all__ = ["DTLSHandler", "DTLSServer", "DTLSServerStats", "dtls_echo_handler", "serve_dtls"]

logger = logging.getLogger(__name__)

DTLSHandler = Callable[[DTLSChannel, PeerInfo], Awaitable[object]]
"""``async def handler(channel, peer)``: serve one DTLS peer after its handshake."""

CLOSE_TIMEOUT = 1.0

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
    would be a few hundred bytes more of per-peer memory); ``stopped`` tells
    a removal from an idle timeout.
    """

    __slots__ = ("channel", "hello_id", "link", "scope", "stopped")

    def __init__(self, link: PeerLink, hello_id: bytes) -> None:
        self.link = link
        self.hello_id = hello_id
        self.scope = trio.CancelScope()
        self.stopped = False
        self.channel: DTLSChannel | None = None

    def stop(self) -> None:
        self.stopped = True
        self.scope.cancel()
        self.link.close()


class DTLSServer:
    """Serves DTLS on UDP sockets it is given; see :func:`serve_dtls`.

    *cookies* overrides the secrets built from *settings* (workers share
    one); *clock* is the wall clock the cookie epochs follow.
    """

    def __init__(
        self,
        handler: DTLSHandler,
        settings: ServerSettings,
        *,
        context: SSL.Context | None = None,
        offload: CryptoOffload | None = None,
        cookies: CookieSecrets | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.context = context if context is not None else build_server_context(settings, dtls=True)
        self.offload = offload if offload is not None else CryptoOffload(settings.offload)
        self.cookies = cookies if cookies is not None else cookie_secrets_for(settings)
        self.clock = clock
        self.stats = DTLSServerStats()
        self.peers: PeerTable[tuple[int, Address], _Peer] = PeerTable(settings.max_peers)
        self.sockets: list[trio.socket.SocketType] = []
        self.admitting = True
        """False once draining: no new peers, only the existing ones are served."""
        self._peer_ended = trio.Event()
        self._closing_senders: list[SocketSender] = []
        self.source_limits = SourceLimits.unless_off(
            rate=settings.per_source_rate,
            burst=settings.per_source_burst,
            max_connections=settings.per_source_connections,
            exempt=settings.per_source_exempt,
        )
        self._refusal_log = LogThrottle()

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

        Returns once every peer task has ended (a peer ends when it answers
        with its own close_notify, or its handler returns). Bound it with
        ``trio.move_on_after``; ``stats.peers_active`` tells how many were
        left, and cancelling :meth:`serve` cuts them.
        """
        self.admitting = False
        async with trio.open_nursery() as nursery:
            for peer in self.peers.values():
                nursery.start_soon(_say_goodbye, peer)
        while self.stats.peers_active:
            await self._peer_ended.wait()
            self._peer_ended = trio.Event()

    # -- the receive loop ----------------------------------------------------------

    async def _receive_loop(
        self, index: int, sock: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        sender = SocketSender(sock)
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
                await self._on_datagram(index, datagram, sockaddr, now, sender, nursery)
                # Whatever else is already queued, without a trip through the
                # scheduler per datagram; the await above is the checkpoint.
                for _ in range(_RECEIVE_BATCH):
                    try:
                        datagram, sockaddr = sender.direct.recvfrom(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno not in _ICMP_ERRORS:
                            raise
                        continue
                    await self._on_datagram(index, datagram, sockaddr, now, sender, nursery)
        finally:
            self._closing_senders.append(sender)

    async def _on_datagram(
        self,
        index: int,
        datagram: bytes,
        sockaddr: tuple[object, ...],
        now: float,
        sender: SocketSender,
        nursery: trio.Nursery,
    ) -> None:
        """Ask the cookie gate what to do with *datagram*, and do it."""
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
                await self._send_hello_verify_request(reply, address, sender)
            case Admit():
                self.stats.cookies_verified += 1
                self._start_peer(key, datagram, decision, sender, nursery)

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
            engine = DTLSEngine.accept(self.context, datagram, mtu=self.settings.mtu)
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
            else:
                self.stats.peers_evicted += 1
                logger.info(
                    "peer table full: evicting idle peer %s", format_address(old.link.address)
                )
            old.stop()
        self.stats.peers_total += 1
        self.stats.peers_active += 1
        nursery.start_soon(self._peer_task, key, peer, engine)

    def _refuse(self, address: Address, why: Refusal) -> None:
        """Drop a valid ClientHello the per-source limits refuse; the client retries later."""
        self.stats.dropped[f"per_source_{why}"] += 1
        log_refusal(self._refusal_log, trio.current_time(), address, why, "DTLS peer")

    # -- one peer --------------------------------------------------------------------

    async def _peer_task(self, key: tuple[int, Address], peer: _Peer, engine: DTLSEngine) -> None:
        address = key[1]
        channel = DTLSChannel(peer.link, engine, offload=self.offload, peer_address=address)
        peer.channel = channel
        started = trio.current_time()
        info: PeerInfo | None = None
        reason, error = "cancelled", None
        try:
            with peer.scope:
                info, reason, error = await self._handshake(channel, address)
                if info is not None:
                    reason = "cancelled"  # unless the handler returns
                    reason = await self._run_handler(channel, info, peer.scope)
            if peer.scope.cancelled_caught:
                if peer.stopped:  # replaced, evicted, or cut by a drain
                    reason = "drained" if not self.admitting else "removed"
                else:  # only the idle deadline cancels it otherwise
                    reason = "idle_timeout"
                    self.stats.idle_timeouts += 1
                    logger.info(
                        "DTLS peer %s idle for %gs: removed",
                        format_address(address),
                        self.settings.idle_timeout,
                    )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = "broken"
            logger.info("DTLS peer %s ended: %s", format_address(address), exc)
        except Exception:
            reason = "error"
            self.stats.handler_errors += 1
            logger.exception("DTLS handler failed for %s", format_address(address))
        finally:
            self.peers.remove(key, peer)
            self.stats.peers_active -= 1
            if self.source_limits is not None:
                self.source_limits.release(address[0])
            self._peer_ended.set()
            # A hard stop makes aclose raise Cancelled: account and log anyway.
            try:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await channel.aclose()
            finally:
                account_close(
                    self.stats,
                    channel,
                    address=address,
                    transport="dtls",
                    info=info,
                    duration=trio.current_time() - started,
                    reason=reason,
                    handshake_error=error,
                )

    async def _handshake(
        self, channel: DTLSChannel, address: Address
    ) -> tuple[PeerInfo | None, str, str | None]:
        """The peer's info, or None with why: (info, close reason, handshake error)."""
        started = trio.current_time()
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                await channel.do_handshake()
        except trio.TooSlowError:
            self.stats.handshakes_failed["timeout"] += 1
            logger.info(
                "DTLS handshake from %s timed out after %gs",
                format_address(address),
                self.settings.handshake_timeout,
            )
            return None, "handshake_timeout", None
        except HandshakeError as exc:
            self.stats.handshakes_failed[exc.reason] += 1
            logger.info("DTLS handshake from %s failed: %s", format_address(address), exc.reason)
            return None, "handshake_failed", exc.reason
        elapsed = trio.current_time() - started
        self.stats.handshakes_ok += 1
        self.stats.handshake_seconds.observe(elapsed)
        info = channel.info
        logger.info("DTLS handshake ok: %s time=%.1fms", info.describe(), elapsed * 1000)
        return info, "handshake_done", None

    async def _run_handler(
        self, channel: DTLSChannel, info: PeerInfo, scope: trio.CancelScope
    ) -> str:
        """Run the handler with the idle deadline on the peer's *scope*; why the peer ended."""
        timeout = self.settings.idle_timeout
        if timeout is not None:
            channel.on_activity = IdleDeadline(scope, timeout).touch
        await self.handler(channel, info)
        if not self.admitting:
            return "drained"
        return "peer_closed" if channel.peer_closed else "handler_done"


async def _say_goodbye(peer: _Peer) -> None:
    """close_notify for a drain; a peer still in its handshake is cut instead."""
    channel = peer.channel
    if channel is None or not channel.handshake_done:
        peer.stop()
        return
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await channel.send_close_notify()
        except trio.BusyResourceError:  # the handler is sending: the drain timeout decides
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            peer.stop()


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


async def open_udp_sockets(
    port: int, host: str | None, *, reuse_port: bool = False
) -> list[trio.socket.SocketType]:
    """One bound UDP socket per address *host* resolves to (IPv6 sockets v6-only)."""
    validate_port(port)
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=_stdsocket.SOCK_DGRAM, flags=_stdsocket.AI_PASSIVE
        )
    except OSError as exc:
        raise listen_error(exc, host, port, "UDP") from exc
    sockets: list[trio.socket.SocketType] = []
    seen: set[object] = set()
    try:
        for family, kind, proto, _, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            sock = trio.socket.socket(family, kind, proto)
            sockets.append(sock)
            if family == _stdsocket.AF_INET6:
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
            try:
                await sock.bind(sockaddr)
            except OSError as exc:
                raise listen_error(exc, host, port, "UDP") from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_dtls(
    handler: DTLSHandler,
    port: int,
    *,
    host: str | None = None,
    settings: ServerSettings,
    offload: CryptoOffload | None = None,
    task_status: trio.TaskStatus[DTLSServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve DTLS 1.2 on UDP *host*:*port*, running ``await handler(channel, peer)`` per peer.

    ``nursery.start(serve_dtls, ...)`` returns the :class:`DTLSServer` once
    its sockets are bound. Runs until cancelled. Raises
    :class:`~trio_tls_dtls.core.errors.ListenError` if it cannot bind and
    :class:`~trio_tls_dtls.core.errors.ConfigError` for bad settings or files.
    """
    server = DTLSServer(handler, settings, offload=offload)
    sockets = await open_udp_sockets(port, host)
    await server.serve(sockets, task_status=task_status)
