"""open_tls_stream: connect, handshake with a deadline, hand back a TLSStream.

With ``resume`` (the default) the client resumes sessions by itself through
the settings object's session cache (:mod:`..session_cache`). TLS 1.2 keeps
the session the handshake made; a TLS 1.3 session is worth keeping only once
a ticket has arrived after the handshake, which :class:`_ResumingTLSStream`
notices as data is read or when the stream closes.
"""

from __future__ import annotations

from typing import TypeVar

import trio
from OpenSSL import SSL

from ...core import _ossl
from ...core.contexts import client_context
from ...core.engine import TLSEngine
from ...core.errors import HandshakeError
from ...core.peer_info import format_address
from ...core.settings import ClientSettings
from ..listeners import normalize_address, validate_port
from ..offload import CryptoOffload, shared_offload
from ..session_cache import Resumption, session_cache
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
    resume: bool = True,
    offload: CryptoOffload | None = None,
    local_address: str | None = None,
) -> TLSStream:
    """Connect to *host*:*port* over TCP and complete a TLS handshake.

    The server's certificate is verified against ``settings.ca_file`` (or
    the system's trust store) and must name *server_hostname* (default:
    *host*), which is also sent as SNI. The handshake must finish within
    ``settings.handshake_timeout`` seconds.

    Sessions resume by themselves: with *resume* (the default) the client
    offers the session it last got from the same (*host*, *port*, server
    name) with the same *settings* object, and keeps the one this
    connection establishes for the next (TLS 1.3: once the server's ticket
    has been read with some data, or at ``aclose``). ``stream.info.resumed``
    says whether it resumed; a server that refuses costs a full handshake,
    never an error. ``resume=False`` neither offers nor keeps a session.
    Pass ``session`` (an earlier stream's :attr:`~TLSStream.session`) to
    offer that one instead of the cached one.

    Raises :class:`~trio_tls_dtls.core.errors.HandshakeError` if the handshake
    fails or times out, and ``OSError`` if the TCP connection cannot be made.
    *local_address* is the local IP address to connect from (default: the
    system's choice).
    """
    settings = settings if settings is not None else _DEFAULT_SETTINGS
    validate_port(port)
    name = server_hostname or host
    offload = offload if offload is not None else shared_offload(settings.offload)
    if not resume:
        return await _connect(
            TLSStream, host, port, name, settings, session, offload, local_address
        )
    resumption = Resumption(session_cache(settings), (host, port, name), session)
    while True:
        try:
            stream = await _connect(
                _ResumingTLSStream,
                host,
                port,
                name,
                settings,
                resumption.offered,
                offload,
                local_address,
            )
        except HandshakeError as exc:
            if resumption.retry_after(exc):
                continue
            raise
        stream.keep_sessions(resumption)
        return stream


S = TypeVar("S", bound=TLSStream)


async def _connect(
    stream_type: type[S],
    host: str,
    port: int,
    name: str,
    settings: ClientSettings,
    session: SSL.Session | None,
    offload: CryptoOffload,
    local_address: str | None,
) -> S:
    """One TCP connection and one handshake, offering *session*."""
    engine = TLSEngine.client(
        client_context(settings),
        name,
        check_hostname=settings.verify and settings.check_hostname,
        session=session,
    )
    if settings.request_ocsp:
        engine.connection.request_ocsp()
    transport = await trio.open_tcp_stream(host, port, local_address=local_address)
    try:
        address = normalize_address(transport.socket.getpeername())
        stream = stream_type(transport, engine, offload=offload, peer_address=address)
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


class _ResumingTLSStream(TLSStream):
    """A client TLSStream that hands its session to the session cache when it is resumable.

    ``receive_some`` and ``aclose`` look for a TLS 1.3 ticket only until one
    has been kept; the look is one OpenSSL call, made only while no worker
    thread holds the SSL object (the same test ``aclose`` makes before it
    sends close_notify), so it never shares the object between threads.
    """

    _resumption: Resumption | None = None
    # The session the handshake ended with: a TLS 1.3 ticket replaces it.
    _handshake_session: SSL.Session | None = None

    def keep_sessions(self, resumption: Resumption) -> None:
        """Called once the handshake is done: keep this connection's session."""
        resumption.handshake_done(self.info.resumed)
        session = self.session
        if self.info.protocol != "TLSv1.3":
            resumption.keep(session)  # in the handshake: resumable now
        elif session is not None:
            self._resumption = resumption
            self._handshake_session = session

    def _keep_ticket(self) -> None:
        resumption, before = self._resumption, self._handshake_session
        if resumption is None or before is None or self._guard.busy:
            return
        session = self.session
        if session is not None and not _ossl.same_session(session, before):
            resumption.keep(session)
            # One ticket is enough (OpenSSL servers send two at once).
            self._resumption = self._handshake_session = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await super().receive_some(max_bytes)
        if self._resumption is not None:
            self._keep_ticket()
        return data

    async def aclose(self) -> None:
        if self._resumption is not None:
            self._keep_ticket()
        await super().aclose()
