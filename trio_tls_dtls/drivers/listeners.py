"""Binding listeners (TCP) and sockets (UDP), with errors that say which port and why."""

from __future__ import annotations

import errno
import socket as _stdsocket

import trio

from ..core.errors import ConfigError, ListenError
from ..core.peer_info import Address

__all__ = [
    "listen_error",
    "normalize_address",
    "open_tcp_listeners",
    "open_udp_sockets",
    "validate_port",
]


def validate_port(port: object, name: str = "port") -> int:
    """*port* as an int in 0-65535, or a ConfigError naming *name*."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise ConfigError(f"{name} must be an integer 0-65535, not {port!r}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be 0-65535, not {port}")
    return port


def normalize_address(sockaddr: object) -> Address:
    """(host, port) from an IPv4 or IPv6 socket address (dropping flow info and scope)."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return (str(sockaddr[0]), int(sockaddr[1]))
    raise ValueError(f"not an IP socket address: {sockaddr!r}")


def _describe(host: str | None, port: int) -> str:
    return f"{host or '*'}:{port}" if not host or ":" not in host else f"[{host}]:{port}"


def listen_error(exc: OSError, host: str | None, port: int, proto: str) -> ListenError:
    """A ListenError that says what could not be bound and why."""
    where = f"{proto} {_describe(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"cannot listen on {where}: port {port} is already in use", errno=exc.errno
        )
    if exc.errno == errno.EACCES:
        return ListenError(
            f"cannot listen on {where}: permission denied (ports below 1024 need root)",
            errno=exc.errno,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(
            f"cannot listen on {where}: {host} is not an address of this host", errno=exc.errno
        )
    return ListenError(f"cannot listen on {where}: {exc.strerror or exc}", errno=exc.errno)


async def open_tcp_listeners(
    port: int, host: str | None, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """trio.open_tcp_listeners with a validated port and a clear ListenError.

    With *reuse_port*, every socket gets SO_REUSEPORT, so several processes
    (workers) can listen on the same port and the kernel spreads new
    connections among them.
    """
    validate_port(port)
    if not reuse_port:
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise listen_error(exc, host, port, "TCP") from exc
    reuse = (_stdsocket.SO_REUSEADDR, _stdsocket.SO_REUSEPORT)
    sockets = await _bind_each(host, port, _stdsocket.SOCK_STREAM, "TCP", reuse)
    try:
        for sock in sockets:
            sock.listen(_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise listen_error(exc, host, port, "TCP") from exc
    return [trio.SocketListener(sock) for sock in sockets]


async def open_udp_sockets(
    port: int, host: str | None, *, reuse_port: bool = False
) -> list[trio.socket.SocketType]:
    """One bound UDP socket per address *host* resolves to (IPv6 sockets v6-only).

    With *reuse_port*, every socket gets SO_REUSEPORT (workers sharing a port).
    """
    validate_port(port)
    reuse = (_stdsocket.SO_REUSEPORT,) if reuse_port else ()
    return await _bind_each(host, port, _stdsocket.SOCK_DGRAM, "UDP", reuse)


async def _bind_each(
    host: str | None, port: int, kind: int, proto_name: str, options: tuple[int, ...]
) -> list[trio.socket.SocketType]:
    """A socket of *kind* bound to each address *host* resolves to (once each).

    Every socket gets the SOL_SOCKET *options* set, IPv6 ones IPV6_V6ONLY (so
    an IPv4 socket on the same port does not collide). On any failure the
    sockets made so far are closed and a ListenError says what and why.
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=kind, flags=_stdsocket.AI_PASSIVE)
    except OSError as exc:
        raise listen_error(exc, host, port, proto_name) from exc
    sockets: list[trio.socket.SocketType] = []
    seen: set[object] = set()
    try:
        for family, sock_kind, proto, _, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            sock = trio.socket.socket(family, sock_kind, proto)
            sockets.append(sock)
            try:
                for option in options:
                    sock.setsockopt(_stdsocket.SOL_SOCKET, option, 1)
                if family == _stdsocket.AF_INET6:
                    sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
            except OSError as exc:
                raise listen_error(exc, host, port, proto_name) from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# What trio.open_tcp_listeners uses by default: the kernel caps it at somaxconn.
_BACKLOG = 0xFFFF
