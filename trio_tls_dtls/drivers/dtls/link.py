"""Datagram links: how a DTLSChannel reaches its peer.

A server-side channel shares its endpoint's UDP socket with every other peer:
it sends with ``sendto`` and receives from a small bounded queue that the
endpoint's receive loop fills. A client channel owns a connected UDP socket.
The channel does not care which; it sees :class:`DatagramLink`.
"""

from __future__ import annotations

import os
import socket as _stdsocket
from typing import Protocol

import trio

from ...core.peer_info import Address

__all__ = ["DatagramLink", "PeerLink", "SocketLink", "SocketSender"]

MAX_DATAGRAM = 65536


class DatagramLink(Protocol):
    """One peer's datagrams, both ways."""

    async def send(self, datagram: bytes) -> None: ...

    # Optional: ``send_nowait(datagram) -> bool`` sends at once if that needs
    # no waiting (True; False: use send), raising what send would. With it,
    # a channel sends a flight without a schedule point per datagram.

    async def receive(self) -> bytes:
        """The next datagram; raises ``trio.EndOfChannel`` once the link is closed."""
        ...

    def close(self) -> None: ...

    @property
    def local_address(self) -> Address | None:
        """Our end: the UDP socket's address (None if it cannot be read)."""
        ...


def _socket_address(sock: trio.socket.SocketType | _stdsocket.socket) -> Address | None:
    # A wildcard-bound server socket reports 0.0.0.0 or ::, not the address a
    # datagram was sent to: that would need IP_PKTINFO on every datagram.
    try:
        sockaddr = sock.getsockname()
    except OSError:  # closed
        return None
    return (str(sockaddr[0]), int(sockaddr[1]))


class SocketSender:
    """Serialises sends on one UDP socket shared by many peers.

    A UDP send almost never waits for buffer space, so the common path is
    one plain ``sendto`` on a second handle to the same socket (a duplicated
    descriptor): no address resolution per datagram, no Trio wrapper.
    It does not checkpoint; the callers do (``DTLSChannel.send`` ends with
    one). Only when the kernel says the buffer is full does a send wait,
    through Trio, one task at a time.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self._lock = trio.StrictFIFOLock()
        self.direct = _stdsocket.socket(fileno=os.dup(sock.fileno()))
        """The same socket, non-blocking, for calls that complete at once."""
        self.direct.setblocking(False)

    def sendto_nowait(self, datagram: bytes, address: Address) -> bool:
        """Send at once if the kernel takes it (True); False if it would wait."""
        if self._lock.locked():
            return False  # others wait for room: keep their order
        try:
            self.direct.sendto(datagram, address)
        except BlockingIOError:
            return False
        return True

    async def sendto(self, datagram: bytes, address: Address) -> None:
        if self.sendto_nowait(datagram, address):
            return
        async with self._lock:
            await self.socket.sendto(datagram, address)

    def close(self) -> None:
        """Close the duplicated descriptor (the socket itself belongs to the server)."""
        self.direct.close()


class PeerLink:
    """A server-side peer: sends through the shared socket, receives from a queue.

    The queue is bounded: when a peer's task falls behind, :meth:`deliver`
    drops the datagram (as a congested network would) instead of blocking
    the receive loop that serves every other peer.
    """

    __slots__ = ("_closed", "_lot", "_queue", "_sender", "address", "capacity")

    def __init__(self, sender: SocketSender, address: Address, capacity: int) -> None:
        self._sender = sender
        self.address = address
        self.capacity = capacity
        # A short list, not a deque: a deque allocates a 64-slot block at
        # once, and this queue is per peer and usually empty.
        self._queue: list[bytes] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def deliver(self, datagram: bytes) -> bool:
        """Queue a datagram from the peer; False if it was dropped (queue full or closed)."""
        if self._closed or len(self._queue) >= self.capacity:
            return False
        self._queue.append(datagram)
        if self._lot:  # the peer's task waits for it (else it takes it when it comes back)
            self._lot.unpark()
        return True

    async def receive(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._queue.pop(0)

    async def send(self, datagram: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this DTLS peer was closed")
        await self._sender.sendto(datagram, self.address)

    def send_nowait(self, datagram: bytes) -> bool:
        if self._closed:
            raise trio.ClosedResourceError("this DTLS peer was closed")
        return self._sender.sendto_nowait(datagram, self.address)

    def close(self) -> None:
        self._closed = True
        self._queue.clear()
        self._lot.unpark_all()

    @property
    def local_address(self) -> Address | None:
        """The shared server socket's address."""
        return _socket_address(self._sender.socket)


class SocketLink:
    """A client's own UDP socket, connected to the server.

    A connected UDP socket reports the server's ICMP "port unreachable" as
    ``ConnectionRefusedError`` on the next receive: nothing is listening.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False

    async def send(self, datagram: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this DTLS channel was closed")
        async with self._send_lock:
            await self.socket.send(datagram)

    def send_nowait(self, datagram: bytes) -> bool:
        return False  # a client sends little: trio's send is cheap enough

    async def receive(self) -> bytes:
        if self._closed:
            raise trio.EndOfChannel
        return await self.socket.recv(MAX_DATAGRAM)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.socket.close()

    @property
    def local_address(self) -> Address | None:
        return _socket_address(self.socket)
