"""open_dtls_channel: a connected UDP socket, the cookie exchange and handshake, a channel."""

from __future__ import annotations

import socket as _stdsocket

import trio
from OpenSSL import SSL

from ...core.contexts import client_context
from ...core.engine import DTLSEngine
from ...core.errors import HandshakeError
from ...core.peer_info import format_address
from ...core.settings import ClientSettings
from ..listeners import normalize_address, validate_port
from ..offload import CryptoOffload, shared_offload
from .channel import DTLSChannel
from .link import SocketLink

__all__ = ["open_dtls_channel"]

_DEFAULT_SETTINGS = ClientSettings()


async def open_dtls_channel(
    host: str,
    port: int,
    *,
    settings: ClientSettings | None = None,
    server_hostname: str | None = None,
    session: SSL.Session | None = None,
    offload: CryptoOffload | None = None,
    local_address: str | None = None,
) -> DTLSChannel:
    """Complete a DTLS 1.2 handshake with *host*:*port* over UDP.

    Answers the server's HelloVerifyRequest (cookie exchange), retransmits
    on OpenSSL's timer, verifies the server's certificate and *server_hostname*
    (default: *host*) just as :func:`~trio_tls_dtls.open_tls_stream` does, and
    presents ``settings.certificate`` for mutual authentication. The whole
    handshake must finish within ``settings.handshake_timeout``.

    Any number of channels may share one *settings* object: its Context is
    built once and never modified per connection.

    Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` on failure or
    timeout (including "nothing listening", which UDP reports as an ICMP
    port unreachable), and ``OSError`` if *host* does not resolve.
    *local_address* is the local IP address to send from (default: the
    system's choice).
    """
    settings = settings if settings is not None else _DEFAULT_SETTINGS
    validate_port(port)
    context = client_context(settings, dtls=True)
    infos = await trio.socket.getaddrinfo(host, port, type=_stdsocket.SOCK_DGRAM)
    family, kind, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        if local_address is not None:
            await sock.bind((local_address, 0))
        await sock.connect(sockaddr)
        address = normalize_address(sockaddr)
        engine = DTLSEngine.connect(
            context,
            server_hostname or host,
            mtu=settings.mtu,
            check_hostname=settings.verify and settings.check_hostname,
            session=session,
        )
        if settings.request_ocsp:
            engine.connection.request_ocsp()
        channel = DTLSChannel(
            SocketLink(sock),
            engine,
            offload=offload if offload is not None else shared_offload(settings.offload),
            peer_address=address,
        )
        try:
            with trio.fail_after(settings.handshake_timeout):
                await channel.do_handshake()
        except trio.TooSlowError:
            raise HandshakeError(
                f"DTLS handshake with {format_address(address)} timed out after "
                f"{settings.handshake_timeout:g}s",
                reason="timeout",
            ) from None
    except BaseException:
        sock.close()
        raise
    return channel
