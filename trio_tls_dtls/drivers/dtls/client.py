"""open_dtls_channel: a connected UDP socket, the cookie exchange and handshake, a channel.

With ``resume`` (the default) the client resumes sessions by itself through
the settings object's session cache (:mod:`..session_cache`). DTLS 1.2 makes
its session (ID or ticket) within the handshake, so it is kept as soon as the
handshake ends.
"""

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
from ..session_cache import Resumption, session_cache
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
    resume: bool = True,
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

    Sessions resume by themselves, as with
    :func:`~trio_tls_dtls.open_tls_stream`: with *resume* (the default) the
    client offers the session it last got from the same (*host*, *port*,
    server name) with the same *settings* object and keeps the new one;
    ``channel.info.resumed`` says whether it resumed. ``resume=False``
    neither offers nor keeps one; ``session`` offers that session instead.

    Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` on failure or
    timeout (including "nothing listening", which UDP reports as an ICMP
    port unreachable), and ``OSError`` if *host* does not resolve.
    *local_address* is the local IP address to send from (default: the
    system's choice).
    """
    settings = settings if settings is not None else _DEFAULT_SETTINGS
    validate_port(port)
    name = server_hostname or host
    offload = offload if offload is not None else shared_offload(settings.offload)
    if not resume:
        return await _connect(host, port, name, settings, session, offload, local_address)
    resumption = Resumption(session_cache(settings, dtls=True), (host, port, name), session)
    while True:
        try:
            channel = await _connect(
                host, port, name, settings, resumption.offered, offload, local_address
            )
        except HandshakeError as exc:
            if resumption.retry_after(exc):
                continue
            raise
        # DTLS 1.2 has no post-handshake tickets: the session is resumable now.
        resumption.handshake_done(channel.info.resumed)
        resumption.keep(channel.session)
        return channel


async def _connect(
    host: str,
    port: int,
    name: str,
    settings: ClientSettings,
    session: SSL.Session | None,
    offload: CryptoOffload,
    local_address: str | None,
) -> DTLSChannel:
    """One connected UDP socket and one handshake, offering *session*."""
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
            name,
            mtu=settings.mtu,
            check_hostname=settings.verify and settings.check_hostname,
            session=session,
        )
        if settings.request_ocsp:
            engine.connection.request_ocsp()
        channel = DTLSChannel(SocketLink(sock), engine, offload=offload, peer_address=address)
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
