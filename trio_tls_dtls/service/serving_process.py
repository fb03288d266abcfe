"""The life of one serving process: bind, serve, stop on signals, say how it ended.

``trio-tlsd serve`` as a single process runs :func:`serve_process` once;
with ``--workers N`` (and :func:`~trio_tls_dtls.service.workers.serve_workers`)
every worker runs it, with its index. In order:

1. bind every socket before any task starts (the operator's endpoints
   first, then TCP and UDP), so that a port in use is a plain
   :class:`~trio_tls_dtls.core.errors.ListenError`; then ``hooks.after_bind``
   (the place to drop root) before anything is accepted. A worker binds
   nothing: it adopts the sockets its supervisor opened for its slot
   (:mod:`.worker_sockets`);
2. serve until stopped (:func:`~trio_tls_dtls.service.drain.serve_until_stopped`:
   the signal table, the bounded drain, the second signal), with the
   operator's endpoints beside the service (``/metrics``, ``/healthz``,
   ``/readyz``: :class:`OperatorPorts`), the memory trim after a burst
   (:mod:`.memory_trim`), a worker's watch on its lifeline (:mod:`.lifeline`:
   a supervisor gone is a stop request, a successor started is
   :meth:`~trio_tls_dtls.service.drain.GracefulStop.replaced`), and
   ``hooks.on_serving`` announcing the service;
3. print one summary line, ``WHO: drained: ...; N still open when stopped``
   or ``WHO: stopped at once by a second signal: ...``, and return the exit
   status (:mod:`trio_tls_dtls.service.signals`).

A single process also runs :func:`~trio_tls_dtls.service.upkeep.upkeep`
beside the service: a reload when the certificate files change, new
session-ticket keys on schedule. Workers leave both to their supervisor.

The operator's endpoints answer until the process ends, through the drain,
except in a worker that has been replaced: its endpoints share their ports
with its successor's, so it stops accepting on them at once (requests in
flight are answered) and the successor alone answers from then on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

import trio

from ..core.peer_info import Address
from ..drivers.listeners import normalize_address, open_tcp_listeners
from .drain import GracefulStop, serve_until_stopped
from .health import health_routes
from .http_endpoint import Route, serve_http_on
from .lifeline import watch_lifeline
from .log_format import status_line
from .memory_trim import trim_memory_after_bursts
from .metrics import metrics_routes
from .service import Service
from .upkeep import upkeep
from .worker_sockets import SlotSockets

__all__ = [
    "OperatorPorts",
    "ProcessHooks",
    "Serving",
    "announce_serving",
    "process_name",
    "serve_process",
]

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
    """Where ``/metrics`` (and ``/healthz``, ``/readyz``) are answered, if anywhere."""
    health_address: Address | None = None
    """Where ``/healthz`` and ``/readyz`` alone are answered, if anywhere."""

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
class OperatorPorts:
    """Where a serving process answers the operator over HTTP; None: not at all.

    The metrics port answers ``/metrics``, ``/healthz`` and ``/readyz``; the
    health port the last two only. With workers, the supervisor answers the
    metrics port for all of them (:mod:`.supervisor_endpoint`), and worker
    *k* answers health on ``health_port + k`` (:meth:`for_worker`).
    """

    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    health_port: int | None = None
    health_host: str = "127.0.0.1"

    def for_worker(self, index: int) -> OperatorPorts:
        """The ports of worker *index*: each port plus the index."""
        return replace(
            self,
            metrics_port=None if self.metrics_port is None else self.metrics_port + index,
            health_port=None if self.health_port is None else self.health_port + index,
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
    operator: OperatorPorts | None = None,
    inherited: SlotSockets | None = None,
    lifeline: int | None = None,
) -> int:
    """Bind *service*, serve until stopped, print the summary; the exit status.

    Run it with ``trio.run``; *worker* is the worker index (its sockets then
    share the port with SO_REUSEPORT), None for a single process.
    *operator* says where to answer metrics and health. A worker is given
    *inherited*, the sockets its supervisor opened for its slot (its
    operator ports included), instead of binding, and *lifeline*, the fd of
    its :mod:`.lifeline`.
    """
    hooks = hooks if hooks is not None else ProcessHooks()
    endpoints = await _operator_listeners(service, operator or OperatorPorts(), inherited)
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
        for _, listeners in endpoints:
            for listener in listeners:
                listener.socket.close()
        raise

    async with trio.open_nursery() as beside:  # the operator's endpoints

        async def on_serving(stop: GracefulStop) -> None:
            # A replaced worker's endpoints share their ports with its successor's.
            until = stop.handover if inherited is not None else None
            addresses: list[Address | None] = []
            for routes, listeners in endpoints:
                if listeners:
                    await beside.start(partial(serve_http_on, routes, listeners, until=until))
                    addresses.append(normalize_address(listeners[0].socket.getsockname()))
                else:
                    addresses.append(None)
            if lifeline is not None:
                stop.nursery.start_soon(_watch, lifeline, stop)
            else:  # with workers, the supervisor watches and rotates for all of them
                stop.nursery.start_soon(upkeep, stop)
            stop.nursery.start_soon(trim_memory_after_bursts, service)
            await hooks.on_serving(Serving(stop, worker, *addresses))

        stop = await serve_until_stopped(service, on_serving=on_serving, log=hooks.log)
        if stop.forced or not stop.handover.is_set():
            beside.cancel_scope.cancel()
        # else: a replaced worker stopped accepting on its endpoints, and the
        # requests in flight end by themselves (each has a deadline).
    how = "stopped at once by a second signal" if stop.forced else "drained"
    summary = f"{process_name(worker)}: {how}: {service.summary()}"
    print(
        status_line(f"{summary}; {stop.still_open} still open when stopped"),
        file=sys.stderr,
        flush=True,
    )
    return stop.exit_status


async def _operator_listeners(
    service: Service, ports: OperatorPorts, inherited: SlotSockets | None
) -> list[tuple[dict[str, Route], list[trio.SocketListener]]]:
    """The routes and listeners of the metrics and the health endpoints (either may be empty)."""
    if inherited is not None:
        wrap = [
            [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in socks]
            for socks in (inherited.metrics, inherited.health)
        ]
    else:
        wrap = []
        try:
            for wanted, host in (
                (ports.metrics_port, ports.metrics_host),
                (ports.health_port, ports.health_host),
            ):
                wrap.append([] if wanted is None else await open_tcp_listeners(wanted, host))
        except BaseException:
            for listeners in wrap:
                for listener in listeners:
                    listener.socket.close()
            raise
    return [(metrics_routes(service), wrap[0]), (health_routes(service), wrap[1])]


async def _watch(fd: int, stop: GracefulStop) -> None:
    def gone() -> None:
        if not stop.requests.draining:  # a drain under way is bounded already
            stop.stop("supervisor exit")

    def replaced() -> None:
        if not stop.requests.draining:
            stop.replaced("replaced by a new worker")

    await watch_lifeline(fd, on_replaced=replaced, on_gone=gone)
