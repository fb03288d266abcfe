"""open_tls_stream: connect, handshake with a deadline, hand back a TLSStream."""

from __future__ import annotations

import trio
from OpenSSL import SSL

from ...core.contexts import client_context
from ...core.engine import TLSEngine
from ...core.errors import HandshakeError
from ...core.peer_info import format_address
from ...core.settings import ClientSettings
from ..listeners import normalize_address, validate_port
from ..offload import CryptoOffload, shared_offload
from .stream import TLSStream

__all__ = ["open_tls_stream"]

_DEFAULT_SETTINGS = ClientSettings()


async def open_tls_stream(
    host: str,
    port: int,
    *,
    settings: ClientSettings | None = None,
    server_hostname: str | None = None,
    session: SSL.Session | None = None,
    offload: CryptoOffload | None = None,
    local_address: str | None = None,
) -> TLSStream:
    """Connect to *host*:*port* over TCP and complete a TLS handshake.

    The server's certificate is verified against ``settings.ca_file`` (or
    the system's trust store) and must name *server_hostname* (default:
    *host*), which is also sent as SNI. Pass ``session`` (from an earlier
    stream's :attr:`~TLSStream.session`) to resume. The handshake must
    finish within ``settings.handshake_timeout`` seconds.

    Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` if the handshake
    fails or times out, and ``OSError`` if the TCP connection cannot be made.
    *local_address* is the local IP address to connect from (default: the
    system's choice).
    """
    settings = settings if settings is not None else _DEFAULT_SETTINGS
    validate_port(port)
    context = client_context(settings)
    engine = TLSEngine.client(
        context,
        server_hostname or host,
        check_hostname=settings.verify and settings.check_hostname,
        session=session,
    )
    if settings.request_ocsp:
        engine.connection.request_ocsp()
    transport = await trio.open_tcp_stream(host, port, local_address=local_address)
    try:
        address = normalize_address(transport.socket.getpeername())
        stream = TLSStream(
            transport,
            engine,
            offload=offload if offload is not None else shared_offload(settings.offload),
            peer_address=address,
        )
        try:
            with trio.fail_after(settings.handshake_timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            raise HandshakeError(
                f"TLS handshake with {format_address(address)} timed out after "
                f"{settings.handshake_timeout:g}s",
                reason="timeout",
            ) from None
    except BaseException:
        await trio.aclose_forcefully(transport)
        raise
    return stream
