"""One lifecycle for a TLS connection and a DTLS peer.

Both servers run every connection (TLS) or peer (DTLS) through the same life,
in one task, :meth:`Lifecycle.run`::

    open (admit) -> handshake (deadline) -> handler (idle deadline, lifetime)
         -> left -> close (bounded) -> close record to the sink -> ended

What differs between the two is passed in, and small: a :class:`Transport`
(the name, ``TLS`` or ``DTLS``, for log lines and the record; the server's
logger, so lines keep their logger's name; the bound on closing; how long a
drain waits after its close_notify) and the server's hooks. *open* admits
and builds the stream or channel: a TLS server reads the client's address,
an optional PROXY header and the per-source limits there; a DTLS peer was
admitted by the cookie gate before its task began, so its *open* only makes
the channel. *left* runs as soon as the reason is known, with no
checkpoint since: the connection leaves the tables new work finds it in (the
drain's list; the DTLS peer table, so that the next datagram from its
address meets the gate as a stranger's). *ended* runs once the record is
out: a TLS server decrements the open count there, so whoever waits for it
to fall finds the close already counted. How to cut one short (cancel its
scope; stop a DTLS peer, which also closes its link) is passed to
:meth:`Lifecycle.say_goodbye` and :meth:`Lifecycle.drain`.

Why each one ended (a :data:`~trio_tls_dtls.core.close_record.CloseReason`)
is decided here, in one place:

* the handshake failed or passed its deadline: ``handshake_failed``,
  ``handshake_timeout``;
* the handler returned: ``drained`` during a drain, else ``peer_closed`` if
  the peer's close_notify came, else ``handler_done``;
* the connection's own scope was cancelled: ``lifetime`` if it has been
  open for ``max_connection_lifetime``, ``idle_timeout`` if its idle
  deadline has passed, else it was cut: ``drained`` during a drain, else
  ``removed`` (a DTLS peer replaced or evicted). The deadline, not a flag,
  tells them apart: a drain may cut one whose handshake ends just before
  the cancellation arrives, and that is not idleness;
* the transport failed: ``broken``; the handler raised: ``error``;
* the task itself was cancelled (a hard stop): ``cancelled``.

The record goes to the sink (:data:`~trio_tls_dtls.core.close_record.CloseSink`);
this module neither logs access lines nor counts closes itself. Without a
sink of its own a server counts the record into its stats and writes the
access line (the ``serve_tls``/``serve_dtls`` default); the service passes
its access log, which does the same for both servers. Either way a close is
counted once.

Idleness is measured in application data: the stream or channel touches
the idle deadline when a receive returns (data, or the peer's close_notify)
or a send completes, never for raw bytes. A peer trickling the bytes of a
record that never completes, or sending DTLS records that fail
authentication, is idle. So are records that carry no data: TLS 1.3
KeyUpdate and other post-handshake messages, TLS 1.2 renegotiation
attempts, empty records. Each is a complete record, but counting them would
let a peer hold its slot with them for ever. The optional
``max_connection_lifetime`` caps the same deadline: from admission, busy or
not. Either way the connection ends like any other cut: the handler is
cancelled and ``aclose`` sends close_notify.

A drain says goodbye (close_notify) to each connection, then waits for it to
end. A TLS connection gets until its handler ends, bounded by the service's
drain timeout: TCP delivers the close_notify, and a peer that is gone makes
the connection fail. A DTLS peer that has our close_notify owes us nothing,
and one that vanished (killed, unplugged) will never answer: it gets
``Transport.goodbye_grace`` (a second) to answer with its own close_notify
or finish what it was sending, our close_notify again halfway through (UDP
may have lost the first; a peer that had it drops the copy as a replay),
and is then cut. So a drain is never held by a DTLS peer that is gone.

Memory: an idle connection is parked in this task, so all it holds is
per-connection memory (benchmarks/conn_memory.py measures it). The whole
life is one coroutine frame (the handler's are below it): :meth:`run` is the
task itself, admission is a call that returns, and the idle deadline and the
lifetime move the connection's own cancel scope, never a second scope.

Failures stay in the task: handshake errors, a broken transport and the
handler's exceptions are caught, counted and logged here; only cancellation
reaches the server's nursery.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

import trio

from ..core.close_record import (
    CloseCounts,
    CloseReason,
    CloseRecord,
    CloseSink,
    count_close,
    log_close,
)
from ..core.errors import HandshakeError
from ..core.latency_histogram import LatencyHistogram
from ..core.peer_info import Address, PeerInfo, format_address
from ..core.settings import ServerSettings
from ..core.source_limits import LogThrottle, Refusal
from .idle_deadline import IdleDeadline

__all__ = ["Conversation", "Lifecycle", "LifecycleStats", "Opened", "Transport"]

# A drain's close_notify waits while the handler is sending: this many tries.
_GOODBYE_ATTEMPTS = 20
_GOODBYE_RETRY = 0.05


@dataclass(frozen=True)
class Transport:
    """What the lifecycle says and does differently for TLS and for DTLS."""

    name: str
    """``TLS`` or ``DTLS`` in log lines; lowercase, the close record's ``transport``."""
    noun: str
    """What one is called in log lines: ``connection``, ``peer``."""
    logger: logging.Logger
    """The server's logger: its lines keep their logger's name."""
    close_timeout: float
    """The bound on closing, and on each close_notify a drain sends."""
    goodbye_grace: float | None = None
    """How long a drain waits for one after its close_notify before cutting it
    (DTLS); None: until its handler ends (TLS; the service bounds the drain)."""


class Conversation(Protocol):
    """What the lifecycle needs of a :class:`TLSStream` or a :class:`DTLSChannel`."""

    on_activity: Callable[[], None] | None
    bytes_received: int
    bytes_sent: int

    @property
    def handshake_done(self) -> bool: ...

    @property
    def peer_closed(self) -> bool: ...

    @property
    def info(self) -> PeerInfo: ...

    async def do_handshake(self) -> None: ...

    async def send_close_notify(self) -> None: ...

    async def aclose(self) -> None: ...


class LifecycleStats(CloseCounts, Protocol):
    """The counters of a server's stats that the lifecycle keeps."""

    handshakes_ok: int
    handshakes_failed: Counter[str]
    handshake_seconds: LatencyHistogram
    handler_errors: int
    idle_timeouts: int


T = TypeVar("T")
C = TypeVar("C", bound=Conversation)

Opened = tuple[C, trio.CancelScope, Address]
"""What a server's *open* hook returns: the stream or channel, the scope that
cuts it short (and carries its idle deadline), the peer's address."""


class Lifecycle(Generic[T, C]):
    """One server's way of running each connection or peer; see the module docstring.

    *open* takes the ticket the server starts the task with (:meth:`run`'s
    one argument: a TLS server's accepted socket, a DTLS peer's table key,
    entry and engine) and returns :data:`Opened`, or None if it refused
    (having closed, counted and logged that itself). *left* gets what *open*
    returned and the ticket before the close; *ended* after the record (also
    with None, when *open* refused or raised).
    The ticket is one argument, not ``*args``: a varargs tuple and a kwargs
    dict would be held by every idle connection's frame.
    """

    def __init__(
        self,
        transport: Transport,
        settings: ServerSettings,
        handler: Callable[[C, PeerInfo], Awaitable[object]],
        stats: LifecycleStats,
        on_close: CloseSink | None,
        *,
        open: Callable[[T], Awaitable[Opened[C] | None]],
        left: Callable[[Opened[C], T], object],
        ended: Callable[[Opened[C] | None, T], object] | None = None,
    ) -> None:
        self.transport = transport.name
        self.label = transport.name.lower()
        self.noun = transport.noun
        self.logger = transport.logger
        self.close_timeout = transport.close_timeout
        self.goodbye_grace = transport.goodbye_grace
        self.handshake_timeout = settings.handshake_timeout
        self.idle_timeout = settings.idle_timeout
        self.max_lifetime = settings.max_connection_lifetime
        self.handler = handler
        self.stats = stats
        self.on_close: CloseSink = (
            on_close if on_close is not None else partial(_count_and_log, stats)
        )
        self._open = open
        self._left = left
        self._ended = ended
        self.draining = False
        """True once a drain began: a handler that returns, or a cut, means ``drained``."""
        self._one_ended = trio.Event()
        self._refusal_log = LogThrottle()

    async def run(self, ticket: T) -> None:
        """One connection's or peer's whole life: the server starts this as its task."""
        opened: Opened[C] | None = None
        try:
            opened = await self._open(ticket)
            if opened is None:
                return
            conn, scope, address = opened
            started = trio.current_time()
            info: PeerInfo | None = None
            reason: CloseReason = "cancelled"  # unless decided below: a hard stop
            error: str | None = None
            if self.max_lifetime is not None:
                scope.deadline = started + self.max_lifetime
            try:
                with scope:
                    info, reason, error = await self._handshake(conn, address)
                    if info is not None:
                        if self.idle_timeout is not None:
                            # The connection's own scope carries the idle
                            # deadline, capped by the lifetime it already
                            # has: no second scope per connection.
                            idle = IdleDeadline(scope, self.idle_timeout, scope.deadline)
                            conn.on_activity = idle.touch
                        await self.handler(conn, info)
                        reason = self._why_handler_returned(conn)
                if scope.cancelled_caught:
                    reason = self._why_cut(scope, address, started)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = "broken"
                self.logger.info(
                    "%s %s %s ended: %s", self.transport, self.noun, format_address(address), exc
                )
            except Exception:
                reason = "error"
                self.stats.handler_errors += 1
                self.logger.exception(
                    "%s handler failed for %s", self.transport, format_address(address)
                )
            finally:
                self._left(opened, ticket)
                # aclose closes the socket even when this deadline cancels it.
                # A hard stop makes aclose raise Cancelled: the record goes out anyway.
                try:
                    with trio.move_on_after(self.close_timeout):
                        await conn.aclose()
                finally:
                    self.emit(
                        CloseRecord(
                            reason=reason,
                            transport=self.label,
                            peer=address,
                            info=info,
                            bytes_in=conn.bytes_received,
                            bytes_out=conn.bytes_sent,
                            duration=trio.current_time() - started,
                            handshake_error=error,
                        )
                    )
        finally:
            if self._ended is not None:
                self._ended(opened, ticket)
            self._one_ended.set()

    async def _handshake(
        self, conn: C, address: Address
    ) -> tuple[PeerInfo | None, CloseReason, str | None]:
        """The peer's info, or None and why: (info, close reason so far, handshake error)."""
        started = trio.current_time()
        try:
            with trio.fail_after(self.handshake_timeout):
                await conn.do_handshake()
        except trio.TooSlowError:
            self.stats.handshakes_failed["timeout"] += 1
            self.logger.info(
                "%s handshake from %s timed out after %gs",
                self.transport,
                format_address(address),
                self.handshake_timeout,
            )
            return None, "handshake_timeout", None
        except HandshakeError as exc:
            self.stats.handshakes_failed[exc.reason] += 1
            self.logger.info(
                "%s handshake from %s failed: %s",
                self.transport,
                format_address(address),
                exc.reason,
            )
            return None, "handshake_failed", exc.reason
        elapsed = trio.current_time() - started
        self.stats.handshakes_ok += 1
        self.stats.handshake_seconds.observe(elapsed)
        info = conn.info
        if self.logger.isEnabledFor(logging.INFO):  # describe() is work: only if it is logged
            self.logger.info(
                "%s handshake ok: %s time=%.1fms", self.transport, info.describe(), elapsed * 1000
            )
        return info, "cancelled", None  # cancelled unless the handler returns

    def _why_handler_returned(self, conn: C) -> CloseReason:
        if self.draining:
            return "drained"
        return "peer_closed" if conn.peer_closed else "handler_done"

    def _why_cut(self, scope: trio.CancelScope, address: Address, started: float) -> CloseReason:
        """Why the connection's own scope was cancelled: lifetime, idle deadline, or a cut."""
        now = trio.current_time()
        if now < scope.deadline:
            return "drained" if self.draining else "removed"
        reason: CloseReason
        if self.max_lifetime is not None and now >= started + self.max_lifetime:
            reason, what = "lifetime", f"open for its maximum lifetime of {self.max_lifetime:g}s"
        else:  # the only other deadline it carries
            self.stats.idle_timeouts += 1
            reason, what = "idle_timeout", f"idle for {self.idle_timeout:g}s"
        self.logger.info(
            "%s %s %s %s: closed", self.transport, self.noun, format_address(address), what
        )
        return reason

    def emit(self, record: CloseRecord) -> None:
        """Hand *record* to the sink. A failing sink is logged, never raised into the task."""
        try:
            self.on_close(record)
        except Exception:
            self.logger.exception("the close sink failed on %s", record)

    async def say_goodbye(self, conn: C | None, cut: Callable[[], object]) -> None:
        """close_notify for a drain; one still in its handshake, or that cannot send, is cut."""
        if conn is None or not conn.handshake_done:
            cut()
            return
        for _ in range(_GOODBYE_ATTEMPTS):
            try:
                with trio.move_on_after(self.close_timeout):
                    await conn.send_close_notify()
                return
            except trio.BusyResourceError:  # the handler is sending: let it finish
                await trio.sleep(_GOODBYE_RETRY)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # No goodbye possible: a handler waiting to receive would
                # otherwise hold the drain until its idle deadline.
                cut()
                return

    async def drain(
        self,
        open_now: Iterable[tuple[C | None, Callable[[], object]]],
        still_open: Callable[[], int],
    ) -> None:
        """Say goodbye to each of *open_now* (a conversation and how to cut it short),
        then wait until *still_open* says none is left.

        With a ``goodbye_grace`` (DTLS), what is left after it is cut (see the
        module docstring). Bound it with ``trio.move_on_after``: a TLS peer
        may never answer.
        """
        self.draining = True
        goodbyes = list(open_now)
        await self._say_goodbyes(goodbyes)
        if self.goodbye_grace is not None:
            half = self.goodbye_grace / 2
            with trio.move_on_after(half):
                await self._until_none_open(still_open)
            if still_open():
                with trio.move_on_after(half):
                    # Our close_notify again, in case UDP lost it. One that
                    # has ended meanwhile is cut instead: a no-op.
                    await self._say_goodbyes(goodbyes)
                    await self._until_none_open(still_open)
            for _, cut in goodbyes:
                cut()
        await self._until_none_open(still_open)

    async def _say_goodbyes(self, goodbyes: list[tuple[C | None, Callable[[], object]]]) -> None:
        async with trio.open_nursery() as nursery:
            for conn, cut in goodbyes:
                nursery.start_soon(self.say_goodbye, conn, cut)

    async def _until_none_open(self, still_open: Callable[[], int]) -> None:
        while still_open():
            await self._one_ended.wait()
            self._one_ended = trio.Event()

    def log_refusal(self, address: Address, why: Refusal, what: str) -> None:
        """Log a per-source refusal of a new *what* (connection, peer), a line a second at most."""
        held = self._refusal_log.ready(trio.current_time())
        if held is None:
            return
        limit = "handshake rate" if why == "rate" else f"concurrent {what}s"
        self.logger.warning(
            "refused a %s from %s: over its per-source %s limit (%d more refusals not logged)",
            what,
            format_address(address),
            limit,
            held,
        )


def _count_and_log(counts: CloseCounts, record: CloseRecord) -> None:
    """A server's sink unless it is given one: count into its stats, write the access line."""
    count_close(counts, record)
    log_close(record)
