"""systemd's readiness protocol (``Type=notify``), without libsystemd.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` in its
environment: a Unix datagram socket, either a path (``/run/systemd/notify``)
or an abstract name written with a leading ``@`` (a NUL byte on the wire).
Each message is one datagram of ``KEY=VALUE`` lines. We send:

* ``READY=1`` once the listeners are bound and serving, with the addresses in
  ``STATUS=``: ``systemctl start`` returns then, and units ordered after us
  start when we can take connections, not when the process exists;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC in µs, which
  systemd uses to match the reload) when a reload starts, and ``READY=1``
  when it ends, whether the new files were good or the old ones stay;
* ``STOPPING=1`` when a drain starts;
* ``STATUS=`` with the open connections and peers, whenever the number has
  changed (looked at once a second), shown by ``systemctl status``. The
  number itself goes along as ``X_OPEN=``, a field systemd ignores (the
  ``X_`` prefix is the one sd_notify(3) leaves to applications); the
  ``--workers`` supervisor adds up its workers' (:mod:`.supervisor_notify`).

Without ``NOTIFY_SOCKET`` every call does nothing. Sending never raises: a
lost notification must not take a server down, so a failure is logged once
and the server goes on. A receiver's queue is short (``net.unix.max_dgram_qlen``,
often 10 datagrams), so a send may find it full. The messages that mark a
change of state (RELOADING, READY after a reload, STOPPING) then wait for
room, up to :data:`SEND_TIMEOUT`, as libsystemd's blocking send would; the
ones :func:`announce` sends from the event loop never wait: READY=1 is tried
again every :data:`READY_RETRY` seconds until it is taken, and a STATUS=
that did not go is sent at the next look.

There is one notifier per process, :func:`process_notifier`, made from the
environment on first use; the service calls the module functions. The
``--workers`` supervisor replaces it in each forked worker
(:func:`use_notifier`), so that a worker's READY reaches the supervisor and
only the supervisor talks to systemd (``NotifyAccess=main``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

import trio

__all__ = [
    "Notifier",
    "announce",
    "monotonic_usec",
    "notify_address",
    "process_notifier",
    "reloading",
    "stopping",
    "use_notifier",
]

logger = logging.getLogger(__name__)

SEND_TIMEOUT = 1.0
"""Seconds a state change may wait for room in the receiver's queue before it is given up."""
STATUS_INTERVAL = 1.0
"""Seconds between looks at the open count, for STATUS=."""
READY_RETRY = 0.05
"""Seconds between tries of a READY=1 that found the receiver's queue full."""
_RETRY_SLEEP = 0.005


def notify_address(value: str) -> str:
    """The socket address for a ``NOTIFY_SOCKET`` value; ValueError if it is none.

    ``@name`` is an abstract socket (Linux): the ``@`` becomes a NUL byte.
    An absolute path is a socket file. Anything else (a relative path,
    ``vsock:``, which systemd uses for virtual machines) is refused.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @abstract-name")


class Notifier:
    """Sends sd_notify messages on one datagram socket; does nothing without one.

    *address* is where to send (None: *sock* is connected already).
    *extra* lines go with every message (the supervisor's workers say who
    they are that way). *wait* is how long a send may wait for room by
    default (a worker's notifier never waits: see :mod:`.supervisor_notify`).
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        address: str | None = None,
        *,
        extra: tuple[str, ...] = (),
        wait: float = SEND_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._address = address
        self._extra = extra
        self._wait = wait
        if sock is not None:
            sock.setblocking(False)  # waits are ours, bounded (see send)
        self._warned = False
        self.draining = False
        """Set by :func:`stopping`: STATUS= then says "draining"."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``, or one that does nothing if it is unset or bad."""
        value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
        if not value:
            return cls()
        try:
            address = notify_address(value)
        except ValueError as exc:
            logger.warning("sd_notify off: %s", exc)
            return cls()
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), address)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str, wait: float | None = None) -> bool:
        """Send one message of ``KEY=VALUE`` *fields*; False if not sent (never raises).

        If the receiver's queue is full, try again for up to *wait* seconds
        (default: the notifier's); 0 gives up at once, quietly.
        """
        if self._sock is None:
            return False
        data = "\n".join((*fields, *self._extra)).encode()
        deadline = time.monotonic() + (self._wait if wait is None else wait)
        while True:
            try:
                if self._address is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, self._address)
                return True
            except BlockingIOError as exc:
                # Poll rather than select(): an unconnected datagram socket
                # polls writable whatever the receiver's queue holds.
                if time.monotonic() >= deadline:
                    if (self._wait if wait is None else wait) > 0:
                        self._warn(fields[0], exc)
                    return False
                time.sleep(_RETRY_SLEEP)
            except OSError as exc:
                self._warn(fields[0], exc)
                return False

    def _warn(self, what: str, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("sd_notify: could not send %s: %s", what, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_process_notifier: Notifier | None = None


def process_notifier() -> Notifier:
    """This process's notifier: made from ``$NOTIFY_SOCKET`` on first use."""
    global _process_notifier
    if _process_notifier is None:
        _process_notifier = Notifier.from_environment()
    return _process_notifier


def use_notifier(notifier: Notifier) -> None:
    """Make *notifier* this process's notifier (a forked worker; tests)."""
    global _process_notifier
    _process_notifier = notifier


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Serving(Protocol):
    """What :func:`announce` reads from the service."""

    def describe(self) -> str: ...

    def open_count(self) -> int: ...


def status_fields(service: Serving, *, draining: bool) -> tuple[str, str]:
    """``STATUS=`` and ``X_OPEN=`` for *service* now."""
    count = service.open_count()
    doing = "draining" if draining else f"serving {service.describe()}"
    text = f"{doing}: {count} open"
    return f"STATUS={text}", f"X_OPEN={count}"


async def announce(service: Serving, notifier: Notifier | None = None) -> None:
    """READY=1 now (the listeners serve), then STATUS= whenever the open count changes.

    Returns at once without a notifier; otherwise runs until cancelled (it
    belongs in the service's nursery).
    """
    notifier = notifier or process_notifier()
    if not notifier.enabled:
        return
    # Never wait for room here: this is the event loop. See the module docstring.
    last = status_fields(service, draining=notifier.draining)
    while not notifier.send("READY=1", *last, wait=0):
        await trio.sleep(READY_RETRY)
        last = status_fields(service, draining=notifier.draining)
    while True:
        await trio.sleep(STATUS_INTERVAL)
        now = status_fields(service, draining=notifier.draining)
        if now != last and notifier.send(*now, wait=0):
            last = now


@contextlib.contextmanager
def reloading(notifier: Notifier | None = None) -> Iterator[None]:
    """RELOADING=1 around a reload, READY=1 after it (succeeded or not)."""
    notifier = notifier or process_notifier()
    notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
    try:
        yield
    finally:
        notifier.send("READY=1")


def stopping(open_count: int, notifier: Notifier | None = None) -> None:
    """STOPPING=1: the drain has started."""
    notifier = notifier or process_notifier()
    notifier.draining = True
    notifier.send("STOPPING=1", f"STATUS=draining: {open_count} open", f"X_OPEN={open_count}")
