"""Binding listeners, with errors that say which port and why."""

from __future__ import annotations

import errno

import trio

from .errors import ConfigError, ListenError
from .info import Address

__all__ = ["normalize_address", "open_tcp_listeners", "validate_port"]


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


async def open_tcp_listeners(port: int, host: str | None) -> list[trio.SocketListener]:
    """trio.open_tcp_listeners with a validated port and a clear ListenError."""
    validate_port(port)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise listen_error(exc, host, port, "TCP") from exc
