"""The life of one serving process: bind, serve, stop on signals, say how it ended.

``trio-tlsd serve`` as a single process runs :func:`serve_process` once;
with ``--workers N`` (and :func:`~trio_tls_dtls.service.workers.serve_workers`)
every worker runs it, with its index. In order:

1. bind every socket before any task starts (the metrics listener first,
   then TCP and UDP), so that a port in use is a plain
   :class:`~trio_tls_dtls.core.errors.ListenError`; then ``hooks.after_bind``
   (the place to drop root) before anything is accepted. A worker binds
   nothing: it adopts the sockets its supervisor opened for its slot
   (:mod:`.worker_sockets`);
2. serve until stopped (:func:`~trio_tls_dtls.service.drain.serve_until_stopped`:
   the signal table, the bounded drain, the second signal), with the
   metrics endpoint beside the service, a worker's watch on its supervisor
   (:mod:`.lifeline`: a supervisor gone is a stop request), the memory
   trim after a burst (:mod:`.memory_trim`) and ``hooks.on_serving``
   announcing the service;
3. print one summary line, ``WHO: drained: ...; N still open when stopped``
   or ``WHO: stopped at once by a second signal: ...``, and return the exit
   status (:mod:`trio_tls_dtls.service.signals`).

A worker's metrics listener is shared with the worker that replaces it on a
reload, so a worker stops answering metrics when its drain starts: from then
on its successor alone answers on that port. A single process answers
metrics until it exits.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from ..core.peer_info import Address
from ..drivers.listeners import normalize_address, open_tcp_listeners
from .drain import GracefulStop, serve_until_stopped
from .lifeline import watch_lifeline
from .log_format import status_line
from .memory_trim import trim_memory_after_bursts
from .metrics import serve_metrics_on
from .service import Service
from .worker_sockets import SlotSockets

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
    metrics_address: Address | None = None
    """Where this process answers ``GET /metrics``, if it does."""

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
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    inherited: SlotSockets | None = None,
    lifeline: int | None = None,
) -> int:
    """Bind *service*, serve until stopped, print the summary; the exit status.

    Run it with ``trio.run``; *worker* is the worker index (its sockets then
    share the port with SO_REUSEPORT), None for a single process. With
    *metrics_port*, ``GET /metrics`` is answered on *metrics_host*. A worker
    is given *inherited*, the sockets its supervisor opened for its slot
    (metrics included), instead of binding, and *lifeline*, the fd whose end
    of file says that its supervisor is gone (:mod:`.lifeline`).
    """
    hooks = hooks if hooks is not None else ProcessHooks()
    metrics = await _metrics_listeners(metrics_port, metrics_host, inherited)
    try:
        if inherited is None:
            await service.bind(
                port, host, reuse_port=worker is not None, after_bind=hooks.after_bind
            )
        else:
            service.adopt(inherited.tcp, inherited.udp)
            if hooks.after_bind is not None:
                hooks.after_bind()
    except BaseException:
        for listener in metrics:
            listener.socket.close()
        raise

    async with trio.open_nursery() as beside:  # the metrics endpoint, beside the service

        async def on_serving(stop: GracefulStop) -> None:
            address = None
            if metrics:
                # A worker hands its metrics port to its successor when it drains.
                until = stop.drain_started if inherited is not None else None
                await beside.start(partial(serve_metrics_on, service, metrics, until=until))
                address = normalize_address(metrics[0].socket.getsockname())
            if lifeline is not None:
                stop.nursery.start_soon(
                    watch_lifeline, lifeline, partial(stop.stop, "supervisor gone")
                )
            stop.nursery.start_soon(trim_memory_after_bursts, service)
            await hooks.on_serving(Serving(stop, worker, address))

        stop = await serve_until_stopped(service, on_serving=on_serving, log=hooks.log)
        if inherited is None or stop.forced:
            beside.cancel_scope.cancel()
        # else: a worker's metrics stopped accepting when its drain began, and
        # the requests in flight end by themselves (each has a deadline).
    how = "stopped at once by a second signal" if stop.forced else "drained"
    summary = f"{process_name(worker)}: {how}: {service.summary()}"
    print(
        status_line(f"{summary}; {stop.still_open} still open when stopped"),
        file=sys.stderr,
        flush=True,
    )
    return stop.exit_status


async def _metrics_listeners(
    port: int | None, host: str, inherited: SlotSockets | None
) -> list[trio.SocketListener]:
    if inherited is not None:
        return [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in inherited.metrics
        ]
    if port is None:
        return []
    return await open_tcp_listeners(port, host)
