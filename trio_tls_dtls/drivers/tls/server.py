"""The TLS server: accept, limit, handshake with a deadline, run the handler, close.

Each connection is its own task in one nursery. Whatever happens inside a
connection (a bad handshake, a peer that resets, a handler that raises) is
caught, counted and logged in that task, so it never reaches the nursery and
never disturbs another connection. Only cancellation (shutdown) propagates.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from OpenSSL import SSL

from ...core.client_hello import MAX_PEEK
from ...core.engine import TLSEngine
from ...core.errors import HandshakeError
from ...core.peer_info import Address, PeerInfo, format_address
from ...core.proxy_protocol import MAX_HEADER_LENGTH, ProxyHeaderError, ProxyHeaderParser
from ...core.settings import ServerSettings
from ...core.source_limits import LogThrottle, Refusal, SourceLimits
from ...core.ticket_keys import ServerContexts
from ..close_accounting import LatencyHistogram, account_close, log_close, log_refusal
from ..idle_deadline import IdleDeadline
from ..listeners import normalize_address, open_tcp_listeners
from ..offload import CryptoOffload
from .stream import TLSStream

__all__ = ["TLSHandler", "TLSServer", "TLSServerStats", "serve_tls"]

logger = logging.getLogger(__name__)

TLSHandler = Callable[[TLSStream, PeerInfo], Awaitable[object]]
"""``async def handler(stream, peer)``: serve one connection after its handshake."""

# How long a connection may take to say goodbye (our close_notify) after the
# handler returns, before the socket is simply closed.
_GOODBYE_ATTEMPTS = 20
_GOODBYE_RETRY = 0.05
CLOSE_TIMEOUT = 2.0

# Accept errors that mean "out of resources right now": pause, don't die.
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_PAUSE = 0.1


@dataclass
class TLSServerStats:
    """Counters for one TLS server (the metrics module exports these)."""

    accepted: int = 0
    active: int = 0
    rejected_over_limit: int = 0
    rejected_per_source: Counter[str] = field(default_factory=Counter)
    """Connections closed at once by the per-source limits: ``rate`` or ``connections``."""
    handshakes_ok: int = 0
    handshakes_failed: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    idle_timeouts: int = 0
    closed: int = 0
    closed_by_reason: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    handshake_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
    proxy_accepted: int = 0
    """PROXY protocol headers read and used (``proxy_protocol`` on)."""
    proxy_rejected: Counter[str] = field(default_factory=Counter)
    """Connections refused before TLS, by why: untrusted, invalid, timeout, closed."""


class TLSServer:
    """Serves TLS on listeners it is given; see :func:`serve_tls` for the usual entry.

    *context* is a Context to use as it is, or the
    :class:`~trio_tls_dtls.core.ticket_keys.ServerContexts` to make
    connections from (default: built from *settings*; the service builds
    them itself to share them across workers and to reload them).
    """

    def __init__(
        self,
        handler: TLSHandler,
        settings: ServerSettings,
        *,
        context: SSL.Context | ServerContexts | None = None,
        offload: CryptoOffload | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.contexts = (
            context
            if isinstance(context, ServerContexts)
            else ServerContexts(settings, context=context)
        )
        self.offload = offload if offload is not None else CryptoOffload(settings.offload)
        self.stats = TLSServerStats()
        self.listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        # Open connections, with the scope that cuts each one short.
        self._connections: dict[TLSStream, trio.CancelScope] = {}
        self._connection_ended = trio.Event()
        self._draining = False
        self.source_limits = SourceLimits.unless_off(
            rate=settings.per_source_rate,
            burst=settings.per_source_burst,
            max_connections=settings.per_source_connections,
            exempt=settings.per_source_exempt,
        )
        self._refusal_log = LogThrottle()

    @property
    def addresses(self) -> list[Address]:
        """The (host, port) pairs actually bound (useful with port 0)."""
        return [normalize_address(lst.socket.getsockname()) for lst in self.listeners]

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[TLSServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on *listeners* until cancelled, or until :meth:`drain` stops it.

        After a drain it returns once every connection has ended.
        """
        self.listeners = listeners
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    task_status.started(self)

    async def drain(self) -> None:
        """Stop accepting, send close_notify on every connection, wait for handlers.

        Returns once every connection has ended (the peers see the end of
        our data and close). Bound it with ``trio.move_on_after``; then
        ``stats.active`` tells how many were left, and cancelling
        :meth:`serve` cuts them.
        """
        self._accepting.cancel()
        self._draining = True
        async with trio.open_nursery() as nursery:
            for stream, scope in list(self._connections.items()):
                nursery.start_soon(_say_goodbye, stream, scope)
        while self.stats.active:
            await self._connection_ended.wait()
            self._connection_ended = trio.Event()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    transport = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                        raise
                    logger.error("accept failed (%s); pausing %.1fs", exc.strerror, _ACCEPT_PAUSE)
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                self.stats.accepted += 1
                if self.stats.active >= self.settings.max_connections:
                    # Refuse at once: queueing would only delay the failure
                    # and hold a file descriptor meanwhile.
                    self.stats.rejected_over_limit += 1
                    logger.debug("over max_connections: closing a new connection at once")
                    await trio.aclose_forcefully(transport)
                    continue
                self.stats.active += 1
                nursery.start_soon(self._connection_task, transport)

    async def _connection_task(self, transport: trio.SocketStream) -> None:
        # The whole life of a connection is this one coroutine frame (plus
        # the handler's): an idle connection's parked stack is per-connection
        # memory, so admission is a call that returns and the handler is
        # awaited right here.
        admitted: tuple[Address, bytes] | None = None
        try:
            admitted = await self._admit(transport)
            if admitted is None:
                return
            address, leftover = admitted
            # One deadline for reading the ClientHello (when a front must be
            # chosen by it) and for the whole handshake.
            deadline = trio.current_time() + self.settings.handshake_timeout
            context, leftover = await self._front_for(transport, leftover, deadline)
            stream = TLSStream(
                transport,
                TLSEngine.server(context),
                offload=self.offload,
                peer_address=address,
                initial_data=leftover,
            )
            scope = self._connections[stream] = trio.CancelScope()
            started = trio.current_time()
            info: PeerInfo | None = None
            reason, error = "cancelled", None
            try:
                with scope:
                    info, reason, error = await self._handshake(stream, address, deadline)
                    if info is not None:
                        reason = "cancelled"  # unless the handler returns
                        timeout = self.settings.idle_timeout
                        if timeout is not None:
                            # The connection's own scope carries the idle
                            # deadline: no second scope per connection.
                            stream.on_activity = IdleDeadline(scope, timeout).touch
                        await self.handler(stream, info)
                        reason = self._why_handler_returned(stream)
                if scope.cancelled_caught:
                    # The idle deadline passed, or a drain cut a connection
                    # it saw still in its handshake (which may have finished
                    # just before the cancellation arrived).
                    if info is not None and trio.current_time() >= scope.deadline:
                        reason = self._idle_timed_out(info)
                    else:
                        reason = "drained"
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = "broken"
                logger.info("connection from %s ended: %s", format_address(address), exc)
            except Exception:
                reason = "error"
                self.stats.handler_errors += 1
                logger.exception("handler failed for %s", format_address(address))
            finally:
                del self._connections[stream]
                # aclose closes the socket even when this deadline cancels it.
                # A hard stop makes aclose raise Cancelled: account and log anyway.
                try:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await stream.aclose()
                finally:
                    account_close(
                        self.stats,
                        stream,
                        address=address,
                        transport="tls",
                        info=info,
                        duration=trio.current_time() - started,
                        reason=reason,
                        handshake_error=error,
                    )
        finally:
            if admitted is not None and self.source_limits is not None:
                self.source_limits.release(admitted[0][0])
            self.stats.active -= 1
            self.stats.closed += 1
            self._connection_ended.set()

    async def _admit(self, transport: trio.SocketStream) -> tuple[Address, bytes] | None:
        """The client's address and any bytes read past a PROXY header; None if refused.

        A refused connection is closed, counted and logged here. An admitted
        one holds a per-source slot until the connection task releases it.
        """
        try:
            address = normalize_address(transport.socket.getpeername())
        except OSError:  # the peer left before we looked
            await trio.aclose_forcefully(transport)
            return None
        leftover = b""
        if self.settings.proxy_protocol:  # the real client, for the limits and all after
            proxied = await self._read_proxy_header(transport, address)
            if proxied is None:  # refused: closed, counted and logged
                return None
            address, leftover = proxied
        limits = self.source_limits
        if limits is not None:
            refused = limits.admit(address[0], trio.current_time())
            if refused is not None:
                self._refuse(address, refused)
                await trio.aclose_forcefully(transport)
                return None
        return address, leftover

    def _refuse(self, address: Address, why: Refusal) -> None:
        """Count (and, a line a second at most, log) a connection the per-source limits refused."""
        self.stats.rejected_per_source[why] += 1
        log_refusal(self._refusal_log, trio.current_time(), address, why, "connection")

    async def _read_proxy_header(
        self, transport: trio.SocketStream, address: Address
    ) -> tuple[Address, bytes] | None:
        """The client's address from the PROXY header, and the bytes that followed it.

        *address* is the socket's peer (the load balancer); it stays the
        address when the header names none (LOCAL, UNKNOWN, UNSPEC). Returns
        None if the connection was refused: the peer is not trusted to send a
        header, or the header is bad, late (the handshake timeout bounds it)
        or cut short. The connection is then closed, counted and logged here.
        """
        started = trio.current_time()
        if not self.settings.proxy_trusts(address[0]):
            why = "not in proxy_trusted"
            await self._refuse_proxy(transport, address, started, "untrusted", why)
            return None
        parser = ProxyHeaderParser()
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                while True:
                    data = await transport.receive_some(MAX_HEADER_LENGTH)
                    if not data:
                        why = "the connection closed before the PROXY header ended"
                        await self._refuse_proxy(transport, address, started, "closed", why)
                        return None
                    if (result := parser.feed(data)) is not None:
                        break
        except trio.TooSlowError:
            why = f"no complete PROXY header within {self.settings.handshake_timeout:g}s"
            await self._refuse_proxy(transport, address, started, "timeout", why)
            return None
        except ProxyHeaderError as exc:
            await self._refuse_proxy(transport, address, started, "invalid", str(exc))
            return None
        except trio.BrokenResourceError as exc:
            await self._refuse_proxy(transport, address, started, "closed", str(exc))
            return None
        except BaseException:  # cancelled: the stream that would close it does not exist yet
            await trio.aclose_forcefully(transport)
            raise
        header, leftover = result
        self.stats.proxy_accepted += 1
        source = header.source if header.source is not None else address
        logger.debug(
            "PROXY v%d %s header from %s: client %s",
            header.version,
            header.command,
            format_address(address),
            format_address(source),
        )
        return source, leftover

    async def _refuse_proxy(
        self, transport: trio.SocketStream, address: Address, started: float, why: str, detail: str
    ) -> None:
        """Close a connection refused before TLS; count it and log it."""
        await trio.aclose_forcefully(transport)
        reason = "proxy_untrusted" if why == "untrusted" else "proxy_header"
        self.stats.proxy_rejected[why] += 1
        self.stats.closed_by_reason[reason] += 1
        logger.info("refused connection from %s: %s", format_address(address), detail)
        log_close(
            address=address,
            transport="tls",
            info=None,
            bytes_in=0,
            bytes_out=0,
            duration=trio.current_time() - started,
            reason=reason,
        )

    async def _front_for(
        self, transport: trio.SocketStream, data: bytes, deadline: float
    ) -> tuple[SSL.Context, bytes]:
        """The context to make this connection from, and the bytes read to choose it.

        After a ticket key rotation the ClientHello is read first: its ticket
        names the key, so the front, that opens it. Whatever cuts the reading
        short (the deadline, EOF, a reset) is left for the handshake to meet
        and report; the bytes read become the stream's first input.
        """
        contexts = self.contexts
        context = contexts.for_tls_hello(data)
        try:
            with trio.move_on_at(deadline):
                while context is None:
                    more = await transport.receive_some(MAX_PEEK)
                    if not more:
                        break
                    data += more
                    context = contexts.for_tls_hello(data)
        except trio.BrokenResourceError:
            pass
        except BaseException:  # cancelled: the stream that would close it does not exist yet
            await trio.aclose_forcefully(transport)
            raise
        return (context if context is not None else contexts.current), data

    async def _handshake(
        self, stream: TLSStream, address: Address, deadline: float
    ) -> tuple[PeerInfo | None, str, str | None]:
        """The peer's info, or None with why: (info, close reason, handshake error)."""
        started = trio.current_time()
        try:
            with trio.fail_at(deadline):
                await stream.do_handshake()
        except trio.TooSlowError:
            self.stats.handshakes_failed["timeout"] += 1
            logger.info(
                "TLS handshake from %s timed out after %gs",
                format_address(address),
                self.settings.handshake_timeout,
            )
            return None, "handshake_timeout", None
        except HandshakeError as exc:
            self.stats.handshakes_failed[exc.reason] += 1
            logger.info("TLS handshake from %s failed: %s", format_address(address), exc.reason)
            return None, "handshake_failed", exc.reason
        elapsed = trio.current_time() - started
        self.stats.handshakes_ok += 1
        self.stats.handshake_seconds.observe(elapsed)
        info = stream.info
        logger.info("TLS handshake ok: %s time=%.1fms", info.describe(), elapsed * 1000)
        return info, "handshake_done", None

    def _why_handler_returned(self, stream: TLSStream) -> str:
        if self._draining:
            return "drained"
        return "peer_closed" if stream.peer_closed else "handler_done"

    def _idle_timed_out(self, info: PeerInfo) -> str:
        self.stats.idle_timeouts += 1
        logger.info(
            "closing %s: idle for %gs", format_address(info.address), self.settings.idle_timeout
        )
        return "idle_timeout"


async def _say_goodbye(stream: TLSStream, scope: trio.CancelScope) -> None:
    """close_notify for a drain; a connection still in its handshake is cut instead."""
    if not stream.handshake_done:
        scope.cancel()
        return
    for _ in range(_GOODBYE_ATTEMPTS):
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await stream.send_close_notify()
            return
        except trio.BusyResourceError:  # the handler is sending: let it finish
            await trio.sleep(_GOODBYE_RETRY)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def echo_handler(stream: TLSStream, peer: PeerInfo) -> None:
    """Send back every byte received until the peer closes."""
    while data := await stream.receive_some():
        await stream.send_all(data)


async def serve_tls(
    handler: TLSHandler,
    port: int,
    *,
    host: str | None = None,
    settings: ServerSettings,
    offload: CryptoOffload | None = None,
    task_status: trio.TaskStatus[TLSServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS on *host*:*port*, running ``await handler(stream, peer)`` per connection.

    ``host=None`` listens on every local address. ``nursery.start(serve_tls,
    ...)`` returns the :class:`TLSServer` once it is listening (its
    ``addresses`` tell the port when *port* is 0). Runs until cancelled, or
    until a :meth:`TLSServer.drain` has finished.
    Raises :class:`~trio_tls_dtls.core.errors.ListenError` if it cannot bind and
    :class:`~trio_tls_dtls.core.errors.ConfigError` for bad settings or files.
    """
    server = TLSServer(handler, settings, offload=offload)
    listeners = await open_tcp_listeners(port, host)
    await server.serve(listeners, task_status=task_status)
