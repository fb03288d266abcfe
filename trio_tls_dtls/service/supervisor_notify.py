"""sd_notify with ``--workers``: the workers tell the supervisor, the supervisor tells systemd.

systemd's main process is the supervisor, and with ``NotifyAccess=main``
(the default of ``Type=notify``) systemd hears only it. But the supervisor
serves nothing: the workers bind the ports. So the supervisor relays:

* before the first fork it makes a datagram socket pair. In each worker,
  right after the fork, :meth:`NotifyRelay.in_worker` makes the worker's
  process notifier (:mod:`.sd_notify`) one that sends on the worker's end,
  each message tagged ``X_WORKER_PID=``, and removes ``NOTIFY_SOCKET`` from
  the worker's environment: the worker's own code is unchanged, and nothing
  in it can reach systemd;
* the supervisor reads that socket between signals (:meth:`NotifyRelay.poll`,
  never blocking) and sends ``READY=1`` once *count* workers of the current
  generation have said ``READY=1``: at start, and after a reload, which
  starts with ``RELOADING=1`` (a reload whose files are bad ends with
  ``READY=1`` at once: the running workers serve on);
* ``STATUS=`` counts the workers serving and adds up the ``X_OPEN=`` of every
  live worker, a draining old generation included;
* ``STOPPING=1`` when the supervisor starts draining its workers.

The workers of ``trio-tlsd serve`` and of :func:`.workers.serve_workers` run
a :class:`.service.Service`, which says READY=1 by itself. A *run_worker* of
your own for :class:`.workers.Supervisor` must do the same under systemd
(``process_notifier().send("READY=1")`` once it serves), or the supervisor
never says READY=1 and systemd gives up on the start.

Without ``NOTIFY_SOCKET`` no socket is made and the workers get a notifier
that does nothing. The pair's queue is short (``net.unix.max_dgram_qlen``,
often 10 datagrams) and the supervisor reads it between signals, twice a
second (every :data:`WAITING_POLL` seconds while a READY=1 is owed), so a
worker's notifier never waits for room: that would stall the worker's event
loop. A READY=1 that found the queue full is tried again until it is taken
(:func:`.sd_notify.announce`); a STATUS= at the next look; a STOPPING=1 is
only for the count (the supervisor knows it is stopping).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Collection

from .sd_notify import Notifier, monotonic_usec, use_notifier

__all__ = ["WAITING_POLL", "NotifyRelay"]

WAITING_POLL = 0.05
"""Seconds between reads while the supervisor waits for its workers' READY=1."""

_WORKER_PID = "X_WORKER_PID"


class NotifyRelay:
    """The supervisor's side; see the module docstring."""

    def __init__(self, upstream: Notifier) -> None:
        self.upstream = upstream
        self._inbox: socket.socket | None = None
        self._outbox: socket.socket | None = None
        if upstream.enabled:
            self._inbox, self._outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._inbox.setblocking(False)
        self._ready: set[int] = set()  # workers (pids) that have said READY=1
        self._open: dict[int, int] = {}  # pid -> its last X_OPEN
        self._announced = False  # READY=1 sent for the current generation
        self._stopping = False
        self._status = ""

    @property
    def waiting(self) -> bool:
        """True while a READY=1 is owed to systemd: poll often."""
        return self.upstream.enabled and not (self._announced or self._stopping)

    def in_worker(self) -> None:
        """In a forked worker: report to the supervisor, never to systemd."""
        os.environ.pop("NOTIFY_SOCKET", None)
        self.upstream.close()  # the worker's copy of the supervisor's socket
        if self._inbox is None or self._outbox is None:
            use_notifier(Notifier())
            return
        self._inbox.close()
        tag = f"{_WORKER_PID}={os.getpid()}"
        use_notifier(Notifier(self._outbox, extra=(tag,), wait=0.0))

    def poll(self, live: Collection[int], current: Collection[int], count: int) -> None:
        """Read what the workers sent; tell systemd what changed.

        *live* are the pids of every running worker, *current* those of the
        current generation, *count* how many it should have.
        """
        for fields in self._receive():
            pid = _int(fields.get(_WORKER_PID))
            if pid is None or pid not in live:
                continue  # a late word from a worker already reaped
            if fields.get("READY") == "1":
                self._ready.add(pid)
            if (opened := _int(fields.get("X_OPEN"))) is not None:
                self._open[pid] = opened
        self._ready &= set(live)
        self._open = {pid: n for pid, n in self._open.items() if pid in live}
        serving = len(self._ready & set(current))
        status = self._status_text(serving, count, len(live))
        if self.waiting and serving >= count:
            self._announced = True
            self._status = status
            self.upstream.send("READY=1", f"STATUS={status}")
        elif status != self._status and self.upstream.send(f"STATUS={status}", wait=0):
            self._status = status

    def reloading(self) -> None:
        """A reload starts: a new generation must say READY=1 before we do."""
        self._announced = False
        self.upstream.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def reload_failed(self) -> None:
        """The reload kept the running workers: they are ready as they were."""
        self._announced = True
        self.upstream.send("READY=1")

    def stopping(self) -> None:
        self._stopping = True
        self.upstream.send("STOPPING=1")

    def _status_text(self, serving: int, count: int, live: int) -> str:
        opened = sum(self._open.values())
        if self._stopping:
            return f"draining {live} workers: {opened} open"
        return f"{serving} of {count} workers serving: {opened} open"

    def _receive(self) -> list[dict[str, str]]:
        messages = []
        while self._inbox is not None:
            try:
                data = self._inbox.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            fields = {}
            for line in data.decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            messages.append(fields)
        return messages

    def close(self) -> None:
        for sock in (self._inbox, self._outbox):
            if sock is not None:
                sock.close()


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text)
    return None
