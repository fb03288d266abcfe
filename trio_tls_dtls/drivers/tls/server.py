"""The TLS server: accept, admit, then each connection's life in its own task.

The accept loop counts and caps connections; each admitted one runs the
shared lifecycle (:mod:`..lifecycle`: handshake with a deadline, handler with
the idle deadline, close, close record), whose *open* hook is :meth:`TLSServer._open`
(the client's address, an optional PROXY header, the per-source limits).
Whatever happens inside a connection (a bad handshake, a peer that resets, a
handler that raises) is caught, counted and logged in that task, so it never
reaches the nursery and never disturbs another connection. Only
cancellation (shutdown) propagates.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from OpenSSL import SSL

from ...core.client_hello import MAX_PEEK
from ...core.close_record import CloseRecord, CloseSink
from ...core.engine import TLSEngine
from ...core.latency_histogram import LatencyHistogram
from ...core.peer_info import Address, PeerInfo, format_address
from ...core.proxy_protocol import MAX_HEADER_LENGTH, ProxyHeaderError, ProxyHeaderParser
from ...core.settings import ServerSettings
from ...core.source_limits import Refusal, SourceLimits
from ...core.ticket_keys import ServerContexts
from ..lifecycle import Lifecycle, Opened, Transport
from ..listeners import normalize_address, open_tcp_listeners
from ..offload import CryptoOffload
from .stream import TLSStream

__all__ = ["TLSHandler", "TLSServer", "TLSServerStats", "serve_tls"]

logger = logging.getLogger(__name__)

TLSHandler = Callable[[TLSStream, PeerInfo], Awaitable[object]]
"""``async def handler(stream, peer)``: serve one connection after its handshake."""

# How long a connection may take to say goodbye (our close_notify) after the
# handler returns, before the socket is simply closed.
CLOSE_TIMEOUT = 2.0

_TRANSPORT = Transport("TLS", "connection", logger, CLOSE_TIMEOUT)

# Accept errors that mean "out of resources right now": pause, don't die.
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_PAUSE = 0.1
# Connections taken per wake-up after the first, before yielding to the others.
_ACCEPT_BATCH = 16


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
    *on_close* gets each connection's
    :class:`~trio_tls_dtls.core.close_record.CloseRecord` when it ends; by
    default the record is counted into :attr:`stats` (``closed_by_reason``,
    ``bytes_in``, ``bytes_out``) and logged as the access line on
    ``trio_tls_dtls.access``. A sink of your own replaces both (call
    :func:`~trio_tls_dtls.core.close_record.count_close` and
    :func:`~trio_tls_dtls.core.close_record.log_close` to keep them).
    """

    def __init__(
        self,
        handler: TLSHandler,
        settings: ServerSettings,
        *,
        context: SSL.Context | ServerContexts | None = None,
        offload: CryptoOffload | None = None,
        on_close: CloseSink | None = None,
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
        self.source_limits = SourceLimits.unless_off(
            rate=settings.per_source_rate,
            burst=settings.per_source_burst,
            max_connections=settings.per_source_connections,
            exempt=settings.per_source_exempt,
        )
        self.lifecycle = Lifecycle(
            _TRANSPORT,
            settings,
            handler,
            self.stats,
            on_close,
            open=self._open,
            left=self._left,
            ended=self._ended,
        )
        """Each connection's life, from admission to its close record."""

    @property
    def context(self) -> SSL.Context:
        """The context new connections start from (the current ticket-key front).

        Read-only, kept for code written before :attr:`contexts`: a reload or a
        ticket-key rotation replaces what it returns.
        """
        return self.contexts.current

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
        await self.lifecycle.drain(
            [(stream, scope.cancel) for stream, scope in self._connections.items()],
            lambda: self.stats.active,
        )

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections, a burst of them per wake-up.

        trio's ``accept`` waits for the first connection; those already
        queued behind it are taken with a plain ``accept()`` on a second
        handle to the listening socket (as the DTLS endpoint reads its
        datagrams), up to ``_ACCEPT_BATCH``, without a schedule point each:
        trio's accept yields once per connection, whether or not it waited.
        """
        async with listener:
            direct = socket.socket(fileno=os.dup(listener.socket.fileno()))
            direct.setblocking(False)
            try:
                while True:
                    try:
                        transport = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                            raise
                        logger.error(
                            "accept failed (%s); pausing %.1fs", exc.strerror, _ACCEPT_PAUSE
                        )
                        await trio.sleep(_ACCEPT_PAUSE)
                        continue
                    self._start_connection(transport, nursery)
                    for _ in range(_ACCEPT_BATCH):
                        try:
                            accepted, _ = direct.accept()
                        except OSError:  # none queued, or out of resources: trio's accept says
                            break
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
                        self._start_connection(stream, nursery)
            finally:
                direct.close()

    def _start_connection(self, transport: trio.SocketStream, nursery: trio.Nursery) -> None:
        """Count a new connection, and start its task or refuse it."""
        self.stats.accepted += 1
        if self.stats.active >= self.settings.max_connections:
            # Refuse at once: queueing would only delay the failure and
            # hold a file descriptor meanwhile.
            self.stats.rejected_over_limit += 1
            logger.debug("over max_connections: closing a new connection at once")
            transport.socket.close()
            return
        self.stats.active += 1
        nursery.start_soon(self.lifecycle.run, transport)

    async def _open(self, transport: trio.SocketStream) -> Opened[TLSStream] | None:
        """Admit a new connection and make its stream; None if it was refused."""
        admitted = await self._admit(transport)
        if admitted is None:
            return None
        address, leftover = admitted
        context, leftover = await self._front_for(transport, address, leftover)
        if context is None:  # no whole ClientHello in time: closed, counted and logged
            return None
        stream = TLSStream(
            transport,
            TLSEngine.server(context),
            offload=self.offload,
            peer_address=address,
            initial_data=leftover,
        )
        scope = self._connections[stream] = trio.CancelScope()
        return stream, scope, address

    async def _front_for(
        self, transport: trio.SocketStream, address: Address, data: bytes
    ) -> tuple[SSL.Context | None, bytes]:
        """The context to make this connection from, and the bytes read to choose it.

        After a ticket key rotation the ClientHello is read first: its
        ticket names the key, and so the front, that opens it. A client that
        sends no whole ClientHello within ``handshake_timeout`` is closed
        here, as the handshake deadline would (None); EOF or a reset is left
        to the handshake, which meets it at once.
        """
        contexts = self.contexts
        context = contexts.for_tls_hello(data)
        if context is not None:
            return context, data
        started = trio.current_time()
        try:
            with trio.move_on_after(self.settings.handshake_timeout) as deadline:
                while context is None:
                    more = await transport.receive_some(MAX_PEEK)
                    if not more:
                        break
                    data += more
                    context = contexts.for_tls_hello(data)
        except trio.BrokenResourceError:
            pass
        except BaseException:  # cancelled: the stream that would close it does not exist yet
            await self._close_unopened(transport, address)
            raise
        if deadline.cancelled_caught:
            await self._close_unopened(transport, address)
            self.stats.handshakes_failed["timeout"] += 1
            logger.info(
                "TLS handshake from %s timed out after %gs",
                format_address(address),
                self.settings.handshake_timeout,
            )
            duration = trio.current_time() - started
            self.lifecycle.emit(
                CloseRecord("handshake_timeout", "tls", address, None, len(data), 0, duration)
            )
            return None, data
        return (context if context is not None else contexts.current), data

    async def _close_unopened(self, transport: trio.SocketStream, address: Address) -> None:
        """Close an admitted connection that never got a stream; free its per-source slot."""
        if self.source_limits is not None:
            self.source_limits.release(address[0])
        await trio.aclose_forcefully(transport)

    def _left(self, opened: Opened[TLSStream], transport: trio.SocketStream) -> None:
        """A connection is closing: a drain no longer says goodbye to it."""
        del self._connections[opened[0]]

    def _ended(self, opened: Opened[TLSStream] | None, transport: trio.SocketStream) -> None:
        """A connection the accept loop counted has ended (its record is out)."""
        if opened is not None and self.source_limits is not None:
            self.source_limits.release(opened[2][0])
        self.stats.active -= 1
        self.stats.closed += 1

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
        self.lifecycle.log_refusal(address, why, "connection")

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
        self.stats.proxy_rejected[why] += 1
        logger.info("refused connection from %s: %s", format_address(address), detail)
        self.lifecycle.emit(
            CloseRecord(
                reason="proxy_untrusted" if why == "untrusted" else "proxy_header",
                transport="tls",
                peer=address,
                info=None,
                bytes_in=0,
                bytes_out=0,
                duration=trio.current_time() - started,
            )
        )


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
    on_close: CloseSink | None = None,
    task_status: trio.TaskStatus[TLSServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS on *host*:*port*, running ``await handler(stream, peer)`` per connection.

    ``host=None`` listens on every local address. ``nursery.start(serve_tls,
    ...)`` returns the :class:`TLSServer` once it is listening (its
    ``addresses`` tell the port when *port* is 0). Runs until cancelled, or
    until a :meth:`TLSServer.drain` has finished. *on_close* is where each
    connection's close record goes (see :class:`TLSServer`).
    Raises :class:`~trio_tls_dtls.core.errors.ListenError` if it cannot bind and
    :class:`~trio_tls_dtls.core.errors.ConfigError` for bad settings or files.
    """
    server = TLSServer(handler, settings, offload=offload, on_close=on_close)
    listeners = await open_tcp_listeners(port, host)
    await server.serve(listeners, task_status=task_status)
