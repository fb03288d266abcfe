"""The life of one serving process: bind, serve, stop on signals, say how it ended.

``trio-tlsd serve`` as a single process runs :func:`serve_process` once;
with ``--workers N`` (and :func:`~trio_tls_dtls.service.workers.serve_workers`)
every worker runs it, with its index. In order:

1. bind every socket before any task starts, so that a port in use is a
   plain :class:`~trio_tls_dtls.core.errors.ListenError`; then
   ``hooks.after_bind`` (the place to drop root) before anything is accepted;
2. serve until stopped (:func:`~trio_tls_dtls.service.drain.serve_until_stopped`:
   the signal table, the bounded drain, the second signal), with
   ``hooks.on_serving`` announcing the service and starting what lives
   beside it;
3. print one summary line, ``WHO: drained: ...; N still open when stopped``
   or ``WHO: stopped at once by a second signal: ...``, and return the exit
   status (:mod:`trio_tls_dtls.service.signals`).

A single process also runs :func:`~trio_tls_dtls.service.upkeep.upkeep`
beside the service: a reload when the certificate files change, new
session-ticket keys on schedule. Workers leave both to their supervisor.

A worker differs from a single process only in binding with SO_REUSEPORT and
in its name on the status lines (``trio-tlsd: worker K (pid P)``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .drain import GracefulStop, serve_until_stopped
from .log_format import status_line
from .service import Service
from .upkeep import upkeep

__all__ = ["ProcessHooks", "Serving", "announce_serving", "process_name", "serve_process"]

logger = logging.getLogger(__name__)


def process_name(worker: int | None) -> str:
    """How a process names itself on its status lines."""
    if worker is None:
        return "trio-tlsd"
    return f"trio-tlsd: worker {worker} (pid {os.getpid()})"


@dataclass(frozen=True)
class Serving:
    """What an ``on_serving`` hook is given: a bound, running service and its process."""

    stop: GracefulStop
    worker: int | None
    """The worker index, or None in a single process."""

    @property
    def service(self) -> Service:
        return self.stop.service

    @property
    def nursery(self) -> trio.Nursery:
        """Where to start tasks that live as long as the service (e.g. metrics)."""
        return self.stop.nursery

    @property
    def who(self) -> str:
        return process_name(self.worker)


async def announce_serving(serving: Serving) -> None:
    """The default ``on_serving``: one line saying where the service listens."""
    print(
        status_line(f"{serving.who}: serving {serving.service.describe()}"),
        file=sys.stderr,
        flush=True,
    )


@dataclass(frozen=True)
class ProcessHooks:
    """What a caller adds to the life of each serving process."""

    after_bind: Callable[[], object] | None = None
    """Called once every socket is bound, before anything is accepted (drop root here)."""
    on_serving: Callable[[Serving], Awaitable[object]] = announce_serving
    """Called once the service serves, before any signal is acted on."""
    log: logging.Logger = logger
    """Where the "received: draining" lines go."""


async def serve_process(
    service: Service,
    port: int,
    host: str | None,
    *,
    worker: int | None = None,
    hooks: ProcessHooks | None = None,
) -> int:
    """Bind *service*, serve until stopped, print the summary; the exit status.

    Run it with ``trio.run``; *worker* is the worker index (its sockets then
    share the port with SO_REUSEPORT), None for a single process.
    """
    hooks = hooks if hooks is not None else ProcessHooks()
    await service.bind(port, host, reuse_port=worker is not None, after_bind=hooks.after_bind)

    async def on_serving(stop: GracefulStop) -> None:
        if worker is None:  # with workers, the supervisor watches and rotates for all of them
            stop.nursery.start_soon(upkeep, stop)
        await hooks.on_serving(Serving(stop, worker))

    stop = await serve_until_stopped(service, on_serving=on_serving, log=hooks.log)
    how = "stopped at once by a second signal" if stop.forced else "drained"
    summary = f"{process_name(worker)}: {how}: {service.summary()}"
    print(
        status_line(f"{summary}; {stop.still_open} still open when stopped"),
        file=sys.stderr,
        flush=True,
    )
    return stop.exit_status
