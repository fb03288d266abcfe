"""The service: a TLS listener and a DTLS endpoint on one port number, in one nursery.

:class:`Service` binds first (so a port in use is a plain
:class:`~trio_tls_dtls.core.errors.ListenError` before anything runs) and then
runs each listener as a child of one nursery, each reporting readiness
through ``task_status.started()``. A failure inside one connection or peer
never reaches the nursery: the servers catch it per task. Either listener can
be left out. Both servers send their close records to one
:class:`~.access_log.AccessLog`, which counts and logs them.
"""

from __future__ import annotations

import errno
import logging
import socket as _stdsocket
from collections.abc import Callable, Sequence
from typing import NoReturn

import trio
from OpenSSL import SSL

from ..core.dtls_cookie import CookieSecrets
from ..core.errors import ConfigError, ListenError, TLSDError
from ..core.peer_info import Address, format_address
from ..core.settings import ServerSettings
from ..core.ticket_keys import ServerContexts
from ..drivers.dtls.server import DTLSHandler, DTLSServer, dtls_echo_handler
from ..drivers.listeners import normalize_address, open_tcp_listeners, open_udp_sockets
from ..drivers.offload import CryptoOffload
from ..drivers.tls.server import TLSHandler, TLSServer, echo_handler
from . import sd_notify
from .access_log import AccessLog
from .cpu_quota import usable_cpus
from .file_watch import FileWatch, watched_files

__all__ = ["Service", "serve"]

logger = logging.getLogger(__name__)

# With port 0, the kernel picks the TCP port; the UDP socket then asks for the
# same number, which another program may hold. Try a few times.
_EPHEMERAL_ATTEMPTS = 20


class Service:
    """TLS over TCP and DTLS over UDP, side by side; see :func:`serve`."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        tls: bool = True,
        dtls: bool = True,
        tls_handler: TLSHandler = echo_handler,
        dtls_handler: DTLSHandler = dtls_echo_handler,
        tls_context: SSL.Context | ServerContexts | None = None,
        dtls_context: SSL.Context | ServerContexts | None = None,
        offload: CryptoOffload | None = None,
        cookies: CookieSecrets | None = None,
    ) -> None:
        if not (tls or dtls):
            raise ConfigError("nothing to serve: enable TLS, DTLS or both")
        self.settings = settings
        # The files as they were before they were read: what upkeep compares with.
        self.files = FileWatch(watched_files(settings))
        self.offload = (
            offload
            if offload is not None
            # The CPUs this process may use, a cgroup quota included: with
            # one, handshakes stay on the loop (OffloadSettings "auto").
            else CryptoOffload(settings.offload, cores=usable_cpus().count)
        )
        self.tls: TLSServer | None = None
        self.dtls: DTLSServer | None = None
        self.access_log = AccessLog()
        """Where both servers' close records go: counted into their stats, logged."""
        if tls:
            self.tls = TLSServer(
                tls_handler,
                settings,
                context=tls_context,
                offload=self.offload,
                on_close=self.access_log,
            )
            self.access_log.counts["tls"] = self.tls.stats
        if dtls:
            self.dtls = DTLSServer(
                dtls_handler,
                settings,
                context=dtls_context,
                offload=self.offload,
                cookies=cookies,
                on_close=self.access_log,
            )
            self.access_log.counts["dtls"] = self.dtls.stats
        self._listeners: list[trio.SocketListener] = []
        self._sockets: list[trio.socket.SocketType] = []
        self.tls_addresses: list[Address] = []
        self.dtls_addresses: list[Address] = []
        self.reloads = 0
        self.reloads_failed = 0
        self.ticket_key_rotations = 0
        self._reuse_port = False
        self._dtls_scope = trio.CancelScope()
        self.serving = False
        """True while :meth:`run` serves (listeners started), False before and after."""
        self.stopping: str | None = None
        """Why the service is stopping, from the first stop request on (see
        :meth:`begin_stopping`); None until then. /readyz reports it."""
        self.replaced = False
        """A successor now serves on this service's sockets (a worker after a
        reload): see :meth:`begin_stopping`."""

    @property
    def port(self) -> int:
        """The port number both listeners share (after :meth:`bind`)."""
        if not self.addresses:
            raise RuntimeError("the service is not bound yet")
        return self.addresses[0][1]

    @property
    def addresses(self) -> list[Address]:
        """Every bound address, TCP first (after :meth:`bind`)."""
        return self.tls_addresses + self.dtls_addresses

    def describe(self) -> str:
        parts = []
        if self.tls_addresses:
            parts.append("TLS on tcp " + ", ".join(map(format_address, self.tls_addresses)))
        if self.dtls_addresses:
            parts.append("DTLS on udp " + ", ".join(map(format_address, self.dtls_addresses)))
        return "; ".join(parts)

    async def bind(
        self,
        port: int,
        host: str | None,
        *,
        reuse_port: bool = False,
        after_bind: Callable[[], object] | None = None,
    ) -> None:
        """Open every socket; raises ListenError naming the port and protocol.

        *reuse_port* sets SO_REUSEPORT on every socket, for workers sharing a port.
        *after_bind* is called once every socket is open and before anything
        is accepted or read: the place to drop root privileges (see
        :func:`trio_tls_dtls.service.privileges.drop_privileges`). If it raises, the
        sockets are closed and the exception propagates.
        """
        self._reuse_port = reuse_port
        await self._bind(port, host)
        self._note_addresses()
        if after_bind is not None:
            try:
                after_bind()
            except BaseException:
                await _close_all(self._listeners)
                for sock in self._sockets:
                    sock.close()
                self._listeners, self._sockets = [], []
                raise

    def adopt(self, tcp: Sequence[_stdsocket.socket], udp: Sequence[_stdsocket.socket]) -> None:
        """Serve on sockets opened elsewhere instead of binding (see :meth:`bind`).

        A worker adopts the listening TCP sockets and bound UDP sockets its
        supervisor opened before forking it
        (:mod:`~trio_tls_dtls.service.worker_sockets`); closing them here
        closes only this process's copies.
        """
        self._listeners = [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in (tcp if self.tls is not None else ())
        ]
        self._sockets = [
            trio.socket.from_stdlib_socket(sock) for sock in (udp if self.dtls is not None else ())
        ]
        self._note_addresses()

    def _note_addresses(self) -> None:
        self.tls_addresses = [normalize_address(x.socket.getsockname()) for x in self._listeners]
        self.dtls_addresses = [normalize_address(s.getsockname()) for s in self._sockets]

    async def _bind(self, port: int, host: str | None) -> None:
        if self.tls is None:
            self._sockets = await open_udp_sockets(port, host, reuse_port=self._reuse_port)
            return
        for _ in range(_EPHEMERAL_ATTEMPTS):
            self._listeners = await open_tcp_listeners(port, host, reuse_port=self._reuse_port)
            if self.dtls is None:
                return
            chosen = int(self._listeners[0].socket.getsockname()[1])
            try:
                self._sockets = await open_udp_sockets(chosen, host, reuse_port=self._reuse_port)
                return
            except ListenError as exc:
                await _close_all(self._listeners)
                self._listeners = []
                if port != 0 or exc.errno != errno.EADDRINUSE:
                    raise
        raise ListenError(  # pragma: no cover - 20 busy UDP ports in a row
            f"could not find a free port for both TCP and UDP on {host}", errno=errno.EADDRINUSE
        )

    async def run(
        self, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Serve on the bound sockets until cancelled; they are closed on the way out."""
        if not (self._listeners or self._sockets):
            raise RuntimeError("call bind() before run()")
        async with trio.open_nursery() as nursery:
            if self.tls is not None:
                await nursery.start(self.tls.serve, self._listeners)
            if self.dtls is not None:
                await nursery.start(self._serve_dtls)
            self.serving = True
            try:
                task_status.started(self)
                nursery.start_soon(sd_notify.announce, self)  # systemd: READY=1, then STATUS=
                await trio.sleep_forever()
            finally:
                self.serving = False
        raise AssertionError("unreachable")  # pragma: no cover

    def begin_stopping(self, why: str) -> None:
        """Say the service is on its way out: it still serves, but is no longer ready.

        Called at the first stop request, before any drain delay, so that
        ``/readyz`` fails at once (:mod:`trio_tls_dtls.service.health`). The
        first reason given is kept. A service that has been :attr:`replaced`
        stays ready: its operator ports are its successor's now, and a probe
        still in flight there is asking about the successor.
        """
        if self.stopping is None and not self.replaced:
            self.stopping = why

    def _contexts(self) -> list[ServerContexts]:
        return [server.contexts for server in (self.tls, self.dtls) if server is not None]

    async def _serve_dtls(self, *, task_status: trio.TaskStatus[DTLSServer]) -> None:
        assert self.dtls is not None
        with self._dtls_scope:
            await self.dtls.serve(self._sockets, task_status=task_status)

    def reload(self) -> bool:
        """Re-read certificates and keys from disk for new handshakes.

        Established connections and peers keep the session they have, and
        the session-ticket keys stay: a session from before the reload
        resumes after it. If a file is missing or bad, the old certificates
        stay in use, the reason is logged, and this returns False.
        """
        with sd_notify.reloading():  # systemd: RELOADING=1, then READY=1
            return self._reload_contexts()

    def _reload_contexts(self) -> bool:
        self.files.changed()  # what is read now is what the next look compares with
        try:
            # Both protocols' files are read before either changes.
            commits = [contexts.prepare_reload() for contexts in self._contexts()]
        except TLSDError as exc:
            self.reloads_failed += 1
            logger.error("reload failed, keeping the old certificates: %s", exc)
            return False
        for commit in commits:
            commit()
        self.reloads += 1
        logger.info("reloaded certificates and keys from disk")
        return True

    def rotate_ticket_keys(self) -> bool:
        """New session-ticket keys; tickets sealed with the ones in use resume until the next.

        False if nothing rotated (tickets off, or contexts given as they
        are) or if it failed (logged; the keys in use stay).
        """
        try:
            rotated = [contexts.rotate() for contexts in self._contexts()]
        except TLSDError as exc:
            logger.error("session-ticket key rotation failed, keeping the keys in use: %s", exc)
            return False
        if not any(rotated):
            return False
        self.ticket_key_rotations += 1
        logger.info("rotated the session-ticket keys (the previous ones still open tickets)")
        return True

    async def drain(self) -> None:
        """Stop taking new connections and peers, close_notify everyone, wait for handlers.

        Bound it with ``trio.move_on_after(settings.drain_timeout)``;
        :meth:`open_count` then says how many were still open, and
        cancelling :meth:`run` cuts them.
        """
        self.begin_stopping("draining")
        sd_notify.stopping(self.open_count())  # systemd: STOPPING=1
        async with trio.open_nursery() as nursery:
            if self.tls is not None:
                nursery.start_soon(self.tls.drain)
            if self.dtls is not None:
                nursery.start_soon(self._drain_dtls)

    async def _drain_dtls(self) -> None:
        """The DTLS drain; then the UDP sockets are read no more.

        Once the drain is over no peer is left (the driver cuts one that has
        not answered our close_notify within its grace) and none would be
        admitted: a draining endpoint only drops new ClientHellos. So it
        stops reading. For a worker this matters: after a reload its UDP
        sockets are shared with the worker that replaces it (see
        :mod:`.worker_sockets`), and every datagram it reads is one its
        successor, which would answer a new handshake, does not get.
        """
        assert self.dtls is not None
        await self.dtls.drain()
        self._dtls_scope.cancel()

    def open_count(self) -> int:
        """TLS connections plus DTLS peers open right now."""
        tls = self.tls.stats.active if self.tls is not None else 0
        dtls = self.dtls.stats.peers_active if self.dtls is not None else 0
        return tls + dtls

    def summary(self) -> str:
        """One line: what was served."""
        parts = []
        if self.tls is not None:
            s = self.tls.stats
            parts.append(
                f"TLS: {s.accepted} connections, {s.handshakes_ok} handshakes ok, "
                f"{sum(s.handshakes_failed.values())} failed"
            )
        if self.dtls is not None:
            d = self.dtls.stats
            parts.append(
                f"DTLS: {d.peers_total} peers, {d.handshakes_ok} handshakes ok, "
                f"{sum(d.handshakes_failed.values())} failed"
            )
        return "; ".join(parts)


async def _close_all(listeners: Sequence[trio.SocketListener]) -> None:
    for listener in listeners:
        await listener.aclose()


async def serve(
    settings: ServerSettings,
    port: int,
    *,
    host: str | None = None,
    tls_handler: TLSHandler = echo_handler,
    dtls_handler: DTLSHandler = dtls_echo_handler,
    tls: bool = True,
    dtls: bool = True,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve TLS on TCP and DTLS on UDP *port* (the same number) until cancelled.

    ``await nursery.start(serve, settings, 0)`` returns the running
    :class:`Service`; its ``port`` is the one chosen. Handlers default to
    echo. ``tls=False`` or ``dtls=False`` runs one listener only.
    """
    service = Service(
        settings, tls=tls, dtls=dtls, tls_handler=tls_handler, dtls_handler=dtls_handler
    )
    await service.bind(port, host)
    await service.run(task_status=task_status)
