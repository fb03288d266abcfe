"""The listening sockets of ``--workers``: opened once by the supervisor, one set per slot.

Why the supervisor opens them, and keeps them
---------------------------------------------
Workers share a port with SO_REUSEPORT. The kernel sends a UDP datagram (a
DTLS flow) to one socket of the port's group by a hash of its addresses, as
an index into the group's list of sockets. When a socket leaves the list, the
last one takes its place; a new one is appended. So if worker sockets came
and went with the workers, one worker's crash and restart would move the
flows of *other* workers, and with them every DTLS session those workers
held (a worker that does not know a peer can only drop its records).

So the supervisor opens, before it forks anything, one set of sockets per
worker slot *k* (TCP listeners, UDP sockets, with metrics a private
loopback listener on a port of the kernel's choosing, which the supervisor's
one endpoint on ``metrics_port`` asks (:mod:`.supervisor_endpoint`), and the
health listener on ``health_port + k``), keeps its own copy of every one,
and hands slot *k*'s set to worker *k* of every generation, restarted or
reloaded. The group's membership then never changes while the service runs,
as in nginx:

* a worker that dies takes no socket with it: connections and datagrams for
  its slot wait in the socket's queue for its replacement;
* a reload's new worker *k* and the draining old one share slot *k*'s
  sockets: the old one stops accepting at once (it closes only its copy), the
  new one accepts from the same queue, nothing is refused in between; the
  old one stops reading its UDP sockets once its drain is over;
* the private metrics listener and the health port of a slot are never
  bound twice, so the supervisor always knows where slot *k* answers,
  whichever worker holds it, and a new generation never waits for (or fails
  on) the old one's ports; the old worker stops accepting on them as soon as
  it is told it was replaced (:mod:`.lifeline`), so that only the new one
  answers ``/readyz``.

When the service stops, the supervisor closes its copies (so, once the
workers have closed theirs, new connections are refused rather than queued).

A port already in use is refused even if its holder set SO_REUSEPORT too: a
probe binds it without SO_REUSEPORT first, so a second ``trio-tlsd serve
--workers`` (or a forgotten orphan of an old one) is an error, not a silent
share of the port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..drivers.listeners import listen_error, validate_port

__all__ = ["SlotSockets", "open_metrics_endpoint", "open_slot_sockets"]

# What trio.open_tcp_listeners uses: the kernel caps it at somaxconn.
_BACKLOG = 0xFFFF


@dataclass
class SlotSockets:
    """The sockets of one worker slot: plain (blocking) sockets, ready to adopt."""

    tcp: list[socket.socket] = field(default_factory=list)
    """Listening TCP sockets for TLS, one per address the host resolves to."""
    udp: list[socket.socket] = field(default_factory=list)
    """Bound UDP sockets for DTLS."""
    metrics: list[socket.socket] = field(default_factory=list)
    """The slot's private metrics listener (loopback, any port), if metrics are on."""
    health: list[socket.socket] = field(default_factory=list)
    """Listening TCP sockets for the health endpoint of this slot."""

    def __iter__(self) -> Iterator[socket.socket]:
        yield from self.tcp
        yield from self.udp
        yield from self.metrics
        yield from self.health

    def close(self) -> None:
        """Close this process's copies (other processes keep theirs)."""
        for sock in self:
            sock.close()


def open_slot_sockets(
    count: int,
    port: int,
    host: str | None,
    *,
    tls: bool = True,
    dtls: bool = True,
    private_metrics: bool = False,
    health_port: int | None = None,
    health_host: str = "127.0.0.1",
) -> list[SlotSockets]:
    """*count* sets of sockets on *port*; each with a private metrics listener if
    *private_metrics*, set *k* with its health endpoint on ``health_port + k``.

    Blocking (the supervisor runs no event loop). Raises
    :class:`~trio_tls_dtls.core.errors.ListenError` naming the port if any
    cannot be bound, or :class:`~trio_tls_dtls.core.errors.ConfigError` for
    a port out of range (nothing stays open then).
    """
    validate_port(port)
    if health_port is not None:
        validate_port(health_port + count - 1, "health port")
    slots: list[SlotSockets] = []
    try:
        if tls:
            _refuse_if_in_use(port, host, "TCP", socket.SOCK_STREAM)
        if dtls:
            _refuse_if_in_use(port, host, "UDP", socket.SOCK_DGRAM)
        for index in range(count):
            slot = SlotSockets()
            slots.append(slot)
            if tls:
                slot.tcp = _bind_all(port, host, "TCP", socket.SOCK_STREAM, reuse_port=True)
            if dtls:
                slot.udp = _bind_all(port, host, "UDP", socket.SOCK_DGRAM, reuse_port=True)
            if private_metrics:
                slot.metrics = _bind_all(0, "127.0.0.1", "TCP", socket.SOCK_STREAM)
            if health_port is not None:
                slot.health = _bind_all(health_port + index, health_host, "TCP", socket.SOCK_STREAM)
    except BaseException:
        for slot in slots:
            slot.close()
        raise
    return slots


def open_metrics_endpoint(port: int, host: str) -> list[socket.socket]:
    """The listeners of the supervisor's one metrics endpoint, *host*:*port*."""
    validate_port(port, "metrics port")
    return _bind_all(port, host, "TCP", socket.SOCK_STREAM)


def _addresses(
    port: int, host: str | None, proto: str, kind: socket.SocketKind
) -> list[tuple[socket.AddressFamily, tuple[object, ...]]]:
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise listen_error(exc, host, port, proto) from exc
    unique: dict[tuple[object, ...], socket.AddressFamily] = {}
    for family, _, _, _, sockaddr in infos:
        unique.setdefault(tuple(sockaddr), family)
    return [(family, sockaddr) for sockaddr, family in unique.items()]


def _bind_all(
    port: int,
    host: str | None,
    proto: str,
    kind: socket.SocketKind,
    *,
    reuse_port: bool = False,
    listen: bool = True,
) -> list[socket.socket]:
    """One socket per address *host* resolves to, bound (and, for TCP, listening)."""
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in _addresses(port, host, proto, kind):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
                if listen and kind == socket.SOCK_STREAM:
                    sock.listen(_BACKLOG)
            except OSError as exc:
                raise listen_error(exc, host, port, proto) from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _refuse_if_in_use(port: int, host: str | None, proto: str, kind: socket.SocketKind) -> None:
    """A ListenError if anything holds *port*, SO_REUSEPORT or not (see the module docstring).

    The probe sets SO_REUSEADDR for TCP only (so a closed listener's
    TIME_WAIT connections do not count), never SO_REUSEPORT.
    """
    for probe in _bind_all(port, host, proto, kind, listen=False):
        probe.close()
