"""The bounded drain of a :class:`~trio_tls_dtls.service.service.Service`, driven by signals.

A stop, in order:

0. not ready: ``/readyz`` fails at once (:meth:`Service.begin_stopping
   <trio_tls_dtls.service.service.Service.begin_stopping>`), while the
   listeners go on accepting for ``settings.drain_delay`` seconds (default
   0), the time a load balancer takes to notice and send new clients
   elsewhere;

then the drain:

1. stop accepting: the TLS listeners close, the DTLS endpoint admits no new
   peer (:meth:`Service.drain <trio_tls_dtls.service.service.Service.drain>`);
2. send close_notify to every open connection and peer;
3. wait for their handlers to end, at most ``settings.drain_timeout``;
4. cut what is left by cancelling the service's nursery, and say how many
   that was: :func:`bounded_drain` returns the count at the moment of the
   cut, so the summary line never claims a clean drain that was not.

:func:`serve_until_stopped` runs the service in a nursery and hands each
SIGINT, SIGTERM and SIGHUP to a :class:`GracefulStop`, which turns requests
into these steps by the rule of :mod:`trio_tls_dtls.service.signals`: the
first stop request starts the delay and the drain in the background, a
second one (during either) cancels the nursery at once, a reload request
re-reads the certificates. A task that watches for another reason to stop
(started from the *on_serving* hook) calls :meth:`GracefulStop.stop` and is
held to the same rule; one that watches for a reason to reload (changed
certificate files, see :mod:`trio_tls_dtls.service.upkeep`) calls
:meth:`GracefulStop.reload`.

What "still open" waits for is the drivers' business (``TLSServer.drain``,
``DTLSServer.drain``): how long a DTLS peer that has had our close_notify is
waited for is decided there, and this count follows it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio

from .service import Service
from .signals import HANDLED_SIGNALS, Request, StopRequests

__all__ = ["GracefulStop", "bounded_drain", "serve_until_stopped"]

logger = logging.getLogger(__name__)


async def bounded_drain(service: Service) -> int:
    """Drain *service* for at most its ``drain_timeout``; how many were still open then.

    The caller cuts those by cancelling the scope that runs the service.
    """
    with trio.move_on_after(service.settings.drain_timeout):
        await service.drain()
    return service.open_count()


async def serve_until_stopped(
    service: Service,
    *,
    on_serving: Callable[[GracefulStop], Awaitable[object]] | None = None,
    log: logging.Logger = logger,
) -> GracefulStop:
    """Run the bound *service* until a stop request has drained or cut it.

    *on_serving* runs once the service serves, before any signal is acted
    on (signals that arrive earlier wait for it): the place to start what
    lives beside the service in ``stop.nursery`` (metrics), announce it, or
    watch for another reason to stop. Returns the :class:`GracefulStop`,
    which says how it ended.
    """
    # The receiver is open before the service runs, so a SIGTERM sent the
    # moment the banner is out is queued here, not fatal.
    with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            stop = GracefulStop(service, nursery, log=log)
            await nursery.start(service.run)
            if on_serving is not None:
                await on_serving(stop)
            async for signum in signals:
                stop.on_signal(signum)
    return stop


class GracefulStop:
    """Stop and reload requests for one running service; see the module docstring.

    *nursery* runs :meth:`Service.run`: cancelling it is the cut. *log* is
    the logger the "received: draining" lines go to (the CLI keeps its own
    name on them).
    """

    def __init__(
        self, service: Service, nursery: trio.Nursery, *, log: logging.Logger = logger
    ) -> None:
        self.service = service
        self.nursery = nursery
        """The nursery running the service; tasks started here end with it."""
        self.requests = StopRequests()
        self.still_open = 0
        """Connections and peers still open when the service was cut."""
        self._log = log

    @property
    def forced(self) -> bool:
        """A second stop request cut the drain short."""
        return self.requests.forced

    @property
    def exit_status(self) -> int:
        return self.requests.exit_status()

    def on_signal(self, signum: int) -> None:
        """Act on *signum* by :data:`~trio_tls_dtls.service.signals.SIGNAL_MEANINGS`."""
        self._act(self.requests.on_signal(signum), signal.Signals(signum).name)

    def reload(self, cause: str) -> None:
        """A reload request from *cause* (say, changed files), named in the log: as SIGHUP."""
        self._log.info("%s: reloading", cause)
        self._act(Request.RELOAD, cause)

    def stop(self, cause: str) -> None:
        """A stop request from *cause* (named in the log line): drain, or stop now if draining."""
        self._act(self.requests.stop_requested(), cause)

    def _act(self, request: Request | None, cause: str) -> None:
        if request is Request.RELOAD:
            self.service.reload()
        elif request is Request.DRAIN:
            self.service.begin_stopping(f"stopping: {cause} received")
            delay = self.service.settings.drain_delay
            if delay > 0:
                self._log.info(
                    "%s received: not ready; accepting for %gs more, then draining "
                    "(again to stop now)",
                    cause,
                    delay,
                )
            else:
                self._log_drain(f"{cause} received")
            self.nursery.start_soon(self._drain_then_cut, delay)
        elif request is Request.STOP_NOW:
            self._log.warning("%s received again: stopping now", cause)
            self.still_open = self.service.open_count()
            self.nursery.cancel_scope.cancel()

    def _log_drain(self, why: str) -> None:
        self._log.info(
            "%s: draining %d open (up to %gs; again to stop now)",
            why,
            self.service.open_count(),
            self.service.settings.drain_timeout,
        )

    async def _drain_then_cut(self, delay: float) -> None:
        # A second request cancels this in the delay or mid-drain; it has
        # counted at its own cut.
        if delay > 0:
            await trio.sleep(delay)
            self._log_drain("drain delay over")
        self.still_open = await bounded_drain(self.service)
        self.nursery.cancel_scope.cancel()
