"""Forwarding handlers: terminate TLS or DTLS here, pass the plaintext to a backend.

``forward_tcp`` makes a TLS handler that opens one TCP connection to the
backend per client and copies bytes both ways; ``forward_udp`` makes a DTLS
handler that gives every peer its own connected UDP socket (so the backend
sees one source port per peer) and relays datagram for datagram. Together
they make ``trio-tlsd`` a terminating proxy in the manner of stunnel, for
DTLS as well as TLS.

Endings are passed on: a client's close_notify becomes a TCP FIN to the
backend (and the backend may still answer), the backend's FIN becomes our
close_notify. A backend that is down, refuses, or resets ends the client's
connection cleanly (the server sends close_notify when a handler returns)
and logs why; it never leaves the client hanging.

The backend's peer is us. With ``proxy_protocol="v1"`` or ``"v2"`` it is
told who the client was: a PROXY protocol header
(:mod:`trio_tls_dtls.core.proxy_header_builder`) goes to a TCP backend
before any byte of the client's, and (v2 only: v1 cannot say UDP) in front
of every datagram to a UDP backend, the form BIND 9 and other DNS servers
accept. A v2 header also carries the TLS facts (version, cipher, the client
certificate's CN, SNI, ALPN) as the spec's TLVs. The header is built once
per connection or peer, after the handshake; its destination is the address
the client reached us at (for DTLS on a wildcard socket, the wildcard).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket as _stdsocket

import trio

from ..core.errors import DatagramTooLargeError
from ..core.peer_info import Address, PeerInfo, format_address
from ..core.proxy_header_builder import ProxyVersion, header_for_peer
from ..drivers.dtls.channel import DTLSChannel
from ..drivers.dtls.server import DTLSHandler
from ..drivers.tls.server import TLSHandler
from ..drivers.tls.stream import TLSStream

__all__ = ["forward_tcp", "forward_udp"]

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
# After one direction has ended, how long the other may stay silent before it is cut.
CLOSE_GRACE = 5.0
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
# Sending can also meet a drain's close_notify going out on the same stream
# or channel: after that nothing more may be sent, so it ends the direction too.
_CANNOT_SEND = (*_GONE, trio.BusyResourceError)


def _where(host: str, port: int) -> str:
    return format_address((host, port))


def _check_backend(host: str, port: int) -> None:
    if not isinstance(host, str) or not host:
        raise ValueError(f"backend host must be a non-empty string, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"backend port must be 1-65535, not {port!r}")


def _check_proxy_version(version: ProxyVersion | None, *, datagram: bool) -> None:
    if version not in (None, "v1", "v2"):
        raise ValueError(f"proxy_protocol must be None, 'v1' or 'v2', not {version!r}")
    if datagram and version == "v1":
        raise ValueError("proxy_protocol='v1' cannot describe UDP: use 'v2' for forward_udp")


def _proxy_header(
    version: ProxyVersion, peer: PeerInfo, local: Address | None, *, datagram: bool
) -> bytes:
    # Our servers end a handshake whose client certificate fails to verify
    # (verify_client optional or required), so a certificate here verified.
    verified = peer.certificate is not None
    return header_for_peer(version, peer, local, datagram=datagram, verified=verified)


def _local_address(stream: TLSStream) -> Address | None:
    """The address the client reached us at (a TCP socket knows it, wildcard or not)."""
    transport = stream.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return None
    try:
        sockaddr = transport.socket.getsockname()
    except OSError:
        return None
    return (str(sockaddr[0]), int(sockaddr[1]))


def forward_tcp(
    host: str,
    port: int,
    *,
    connect_timeout: float = 5.0,
    proxy_protocol: ProxyVersion | None = None,
) -> TLSHandler:
    """A TLS handler that forwards each connection's plaintext to TCP *host*:*port*.

    The backend connection is opened after the handshake; if it is refused
    or takes longer than *connect_timeout* seconds, the handler logs why and
    returns (the client gets close_notify). Once one direction has ended,
    the other is cut if it stays silent for ``CLOSE_GRACE`` seconds.
    With *proxy_protocol* (``"v1"`` or ``"v2"``) the backend gets a PROXY
    header naming the client before anything else.
    Raises :class:`ValueError` for a bad *host*, *port*, *connect_timeout*
    or *proxy_protocol*.
    """
    _check_backend(host, port)
    if not connect_timeout > 0 or math.isinf(connect_timeout):
        raise ValueError(f"connect_timeout must be a positive number, not {connect_timeout!r}")
    _check_proxy_version(proxy_protocol, datagram=False)
    backend_name = _where(host, port)

    async def forward_tls_to_tcp(stream: TLSStream, peer: PeerInfo) -> None:
        client = format_address(peer.address)
        try:
            with trio.fail_after(connect_timeout):
                backend = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else _why(exc)
            logger.warning(
                "forward %s -> %s: backend unreachable (%s): closing", client, backend_name, reason
            )
            return
        async with backend:
            if proxy_protocol is not None:
                header = _proxy_header(proxy_protocol, peer, _local_address(stream), datagram=False)
                try:  # before any byte of the client's: the backend reads it first
                    await backend.send_all(header)
                except _GONE as exc:
                    logger.info("forward %s: ended abruptly (%s)", client, exc)
                    return
            async with trio.open_nursery() as nursery:
                relay = _Relay(nursery.cancel_scope, client)
                nursery.start_soon(_tls_to_tcp, stream, backend, relay)
                nursery.start_soon(_tcp_to_tls, backend, stream, relay)

    forward_tls_to_tcp.__qualname__ = f"forward_tcp({backend_name})"
    return forward_tls_to_tcp


def _why(exc: OSError) -> str:
    """The reasons behind a failed connect ("Connection refused"), not just "failed"."""
    cause = exc.__cause__
    causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [exc]
    reasons = [_reason(c) for c in causes]
    return "; ".join(dict.fromkeys(reasons)) or str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _stdsocket.gaierror):  # a name that does not resolve
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


class _Relay:
    """What the two copying directions of one TLS connection share."""

    def __init__(self, scope: trio.CancelScope, client: str) -> None:
        self.scope = scope
        self.client = client
        self.half_closed = False

    def progress(self) -> None:
        """Bytes moved: after a half-close, the grace period starts again."""
        if self.half_closed:
            self.scope.deadline = trio.current_time() + CLOSE_GRACE

    def one_direction_done(self) -> None:
        """One side has ended: the other may go on while it keeps moving bytes."""
        if self.half_closed:  # both ended: nothing left to wait for
            self.scope.cancel()
            return
        self.half_closed = True
        self.progress()

    def broken(self, exc: BaseException) -> None:
        logger.info("forward %s: ended abruptly (%s)", self.client, exc)
        self.scope.cancel()


async def _tls_to_tcp(stream: TLSStream, backend: trio.SocketStream, relay: _Relay) -> None:
    try:
        while data := await stream.receive_some(CHUNK):
            await backend.send_all(data)
            relay.progress()
    except _GONE as exc:
        relay.broken(exc)
        return
    # The client sent close_notify: the backend sees the end of the request.
    with contextlib.suppress(*_GONE):
        await backend.send_eof()
    relay.one_direction_done()


async def _tcp_to_tls(backend: trio.SocketStream, stream: TLSStream, relay: _Relay) -> None:
    try:
        while data := await backend.receive_some(CHUNK):
            await stream.send_all(data)
            relay.progress()
    except _CANNOT_SEND as exc:
        relay.broken(exc)
        return
    # The backend finished: the client sees our close_notify.
    with contextlib.suppress(*_GONE, trio.BusyResourceError):
        await stream.send_close_notify()
    relay.one_direction_done()


def forward_udp(host: str, port: int, *, proxy_protocol: ProxyVersion | None = None) -> DTLSHandler:
    """A DTLS handler that relays each peer's datagrams to UDP *host*:*port*.

    Each peer gets its own connected UDP socket, so the backend sees one
    source port per peer. A backend reply too large for one DTLS record is
    dropped (logged at debug level); an ICMP "port unreachable" ends the peer.
    With ``proxy_protocol="v2"`` every datagram to the backend starts with a
    PROXY v2 header naming the peer (replies need none).
    Raises :class:`ValueError` for a bad *host* or *port*, or for
    ``proxy_protocol="v1"`` (v1 cannot describe UDP).
    """
    _check_backend(host, port)
    _check_proxy_version(proxy_protocol, datagram=True)
    backend_name = _where(host, port)

    async def forward_dtls_to_udp(channel: DTLSChannel, peer: PeerInfo) -> None:
        client = format_address(peer.address)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=_stdsocket.SOCK_DGRAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = trio.socket.socket(family, kind, proto)
        except OSError as exc:
            logger.warning(
                "forward %s -> %s: UDP backend unreachable (%s): closing",
                client,
                backend_name,
                _reason(exc),
            )
            return
        with sock:
            try:
                await sock.connect(sockaddr)
            except OSError as exc:
                logger.warning(
                    "forward %s -> %s: UDP backend unreachable (%s): closing",
                    client,
                    backend_name,
                    _reason(exc),
                )
                return
            route = f"{client} -> {backend_name}"
            prefix = b""
            if proxy_protocol is not None:
                prefix = _proxy_header(proxy_protocol, peer, channel.local_address, datagram=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_dtls_to_udp, channel, sock, nursery.cancel_scope, route, prefix)
                nursery.start_soon(_udp_to_dtls, sock, channel, nursery.cancel_scope, route)

    forward_dtls_to_udp.__qualname__ = f"forward_udp({backend_name})"
    return forward_dtls_to_udp


async def _dtls_to_udp(
    channel: DTLSChannel,
    sock: trio.socket.SocketType,
    scope: trio.CancelScope,
    client: str,
    prefix: bytes,
) -> None:
    try:
        async for message in channel:
            # One datagram in, one out: the header (if any) shares it.
            await sock.send(prefix + message if prefix else message)
    except _GONE as exc:
        logger.info("forward %s: ended abruptly (%s)", client, exc)
    except OSError as exc:
        logger.warning("forward %s: UDP backend unreachable (%s): closing", client, _reason(exc))
    finally:
        # The peer said goodbye (or failed): nothing more to relay.
        scope.cancel()


async def _udp_to_dtls(
    sock: trio.socket.SocketType, channel: DTLSChannel, scope: trio.CancelScope, client: str
) -> None:
    while True:
        try:
            reply = await sock.recv(65536)
        except OSError as exc:
            # ICMP port unreachable for an earlier send: nothing listens there.
            logger.warning(
                "forward %s: UDP backend unreachable (%s): closing", client, _reason(exc)
            )
            scope.cancel()
            return
        if not reply:
            continue  # DTLS cannot carry an empty datagram
        try:
            await channel.send(reply)
        except DatagramTooLargeError:
            # One datagram stays one datagram: one too big for a record at
            # this MTU is dropped, as a link with that MTU would drop it.
            logger.debug(
                "forward %s: dropped a %d-byte backend datagram (at most %d fit)",
                client,
                len(reply),
                channel.max_message_size,
            )
        except _CANNOT_SEND:
            scope.cancel()
            return
