"""The load itself: many concurrent clients in one Trio run, timing every operation.

One *worker* (a Trio run, in this process or in a child process) runs a
share of the clients. For each message size it waits at the phase barrier
(so every process starts a size together), lets its clients work, and
returns a :class:`PhaseResult` per size with the raw latencies; merging and
percentiles happen in :mod:`.report`.

Operations, per mode:

* ``handshake``: connect, complete the handshake, close. The latency is
  connect + handshake. Without ``resume`` every handshake is a full one
  (``resume=False``). With it, the clients share the session cache of their
  process's settings object: one full connection (not timed, with one echo so
  that TLS 1.3 tickets arrive) fills it, and every timed handshake resumes.
* ``echo``: one persistent connection per client; send one message, wait
  for all of it to come back, repeat. The latency is one round trip.
* ``bulk``: like echo, but ``window`` messages in flight per connection,
  sent by one task and counted back by another; the latency of a message is
  from the start of its send to its last byte coming back.

A failed operation is counted by kind (``timeout``, ``refused``, the
exception's name, ...) and, for persistent connections, the connection is
opened again. Failures count towards ``count``, so every run is bounded.
"""

from __future__ import annotations

import os
import time
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ...core.errors import HandshakeError, TLSDError
from ...core.settings import ClientSettings
from ...drivers.dtls.client import open_dtls_channel
from ...drivers.tls.client import open_tls_stream
from .config import MAX_DATAGRAM, BenchConfig

__all__ = ["Connection", "PhaseResult", "datagram_limit", "open_connection", "run_worker"]

_RECEIVE_MAX = 65536


@dataclass
class PhaseResult:
    """One worker's measurements for one size."""

    size: int
    ops: int = 0
    bytes: int = 0
    resumed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    start: float = 0.0
    end: float = 0.0
    latencies_ns: array[int] = field(default_factory=lambda: array("Q"))


class Connection(Protocol):
    resumed: bool

    async def round_trip(self, payload: bytes) -> None: ...
    async def send(self, payload: bytes) -> None: ...
    async def receive_some(self) -> int: ...
    async def aclose(self) -> None: ...


class _StreamConnection:
    """TCP or TLS: a ``trio.abc.Stream``; an echo is complete when all bytes are back."""

    def __init__(self, stream: trio.abc.Stream, resumed: bool = False) -> None:
        self.stream = stream
        self.resumed = resumed

    async def round_trip(self, payload: bytes) -> None:
        await self.stream.send_all(payload)
        remaining = len(payload)
        while remaining:
            data = await self.stream.receive_some(min(remaining, _RECEIVE_MAX))
            if not data:
                raise trio.BrokenResourceError("the server closed the connection")
            remaining -= len(data)

    async def send(self, payload: bytes) -> None:
        await self.stream.send_all(payload)

    async def receive_some(self) -> int:
        data = await self.stream.receive_some(_RECEIVE_MAX)
        if not data:
            raise trio.BrokenResourceError("the server closed the connection")
        return len(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


class _DatagramConnection:
    """UDP or DTLS: one message is one datagram, echoed as one datagram.

    *limit* is the largest message one datagram carries: for DTLS, what one
    record holds at the MTU with the negotiated *cipher*.
    """

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[object]],
        receive: Callable[[], Awaitable[bytes]],
        close: Callable[[], Awaitable[None]],
        resumed: bool = False,
        *,
        limit: int = MAX_DATAGRAM,
        cipher: str | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self._close = close
        self.resumed = resumed
        self.limit = limit
        self.cipher = cipher

    async def round_trip(self, payload: bytes) -> None:
        await self._send(payload)
        reply = await self._receive()
        if len(reply) != len(payload):
            raise ValueError(f"echo of {len(payload)} bytes came back as {len(reply)}")

    async def send(self, payload: bytes) -> None:
        await self._send(payload)

    async def receive_some(self) -> int:
        return len(await self._receive())

    async def aclose(self) -> None:
        await self._close()


async def _udp_connection(host: str, port: int) -> _DatagramConnection:
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    family, kind, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise

    async def receive() -> bytes:
        return await sock.recv(_RECEIVE_MAX)

    async def close() -> None:
        sock.close()
        await trio.lowlevel.checkpoint()

    return _DatagramConnection(sock.send, receive, close)


async def open_connection(cfg: BenchConfig, settings: ClientSettings) -> Connection:
    """A connected (and handshaken) client for *cfg*.

    TLS and DTLS resume through *settings*' session cache with
    ``cfg.resume``, and never without it.
    """
    host, port = cfg.host, cfg.port
    if cfg.proto == "tcp":
        return _StreamConnection(await trio.open_tcp_stream(host, port))
    if cfg.proto == "udp":
        return await _udp_connection(host, port)
    name, resume = cfg.servername, cfg.resume
    if cfg.proto == "tls":
        stream = await open_tls_stream(
            host, port, settings=settings, server_hostname=name, resume=resume
        )
        return _StreamConnection(stream, stream.info.resumed)
    channel = await open_dtls_channel(
        host, port, settings=settings, server_hostname=name, resume=resume
    )

    async def receive() -> bytes:
        return await channel.receive()

    return _DatagramConnection(
        channel.send,
        receive,
        channel.aclose,
        channel.info.resumed,
        limit=channel.max_message_size,
        cipher=channel.info.cipher,
    )


def datagram_limit(conn: Connection) -> tuple[int, str | None] | None:
    """The largest message *conn* can carry and the cipher that sets it; None for streams."""
    if isinstance(conn, _DatagramConnection):
        return conn.limit, conn.cipher
    return None


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a failure, for the error table."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, HandshakeError):
        return f"handshake: {exc.reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and isinstance(exc.__cause__, BaseExceptionGroup):
        return "connect failed"
    if isinstance(exc, trio.BrokenResourceError | TLSDError):
        cause = exc.__cause__
        return f"broken ({type(cause).__name__})" if cause else "broken"
    return type(exc).__name__


class _Budget:
    """How many more operations a client may start in this phase (count or deadline)."""

    def __init__(self, cfg: BenchConfig, start: float) -> None:
        self.remaining = cfg.count
        self.deadline = None if cfg.duration is None else start + cfg.duration

    def take(self) -> bool:
        if self.deadline is not None:
            return time.monotonic() < self.deadline
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


Tick = Callable[[int], None]


class _Client:
    """One simulated client: its connection (kept across sizes)."""

    def __init__(self, cfg: BenchConfig, settings: ClientSettings) -> None:
        self.cfg = cfg
        self.settings = settings
        self.conn: Connection | None = None

    async def connect(self) -> Connection:
        with trio.fail_after(self.cfg.handshake_timeout + 1):
            self.conn = await open_connection(self.cfg, self.settings)
        return self.conn

    async def prime_session(self) -> None:
        """A full handshake plus one echo (TLS 1.3 tickets arrive with it); not timed.

        The session lands in the settings object's cache, which every
        client of this process shares.
        """
        try:
            with trio.fail_after(self.cfg.handshake_timeout + self.cfg.op_timeout):
                conn = await open_connection(self.cfg, self.settings)
                try:
                    await conn.round_trip(b"x")
                finally:
                    await conn.aclose()
        except (OSError, TLSDError, trio.TooSlowError, trio.BrokenResourceError):
            # Then the first timed handshakes are full ones (and fill the
            # cache); the report's "resumed" count shows it.
            pass

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await conn.aclose()

    async def run_phase(self, phase: PhaseResult, start: float, tick: Tick) -> None:
        budget = _Budget(self.cfg, start)
        if self.cfg.mode == "handshake":
            await self._handshakes(phase, budget, tick)
        elif self.cfg.mode == "echo":
            await self._echoes(phase, budget, tick, os.urandom(phase.size))
        else:
            await self._bulk(phase, budget, tick, os.urandom(phase.size))

    async def _handshakes(self, phase: PhaseResult, budget: _Budget, tick: Tick) -> None:
        clock = time.perf_counter_ns
        while budget.take():
            t0 = clock()
            try:
                conn = await self.connect()
            except (OSError, TLSDError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                phase.errors[error_kind(exc)] += 1
                await trio.sleep(0.01)  # nothing listening: don't spin
            else:
                phase.latencies_ns.append(clock() - t0)
                phase.ops += 1
                phase.resumed += conn.resumed
                await self.drop()
            tick(1)

    async def _echoes(
        self, phase: PhaseResult, budget: _Budget, tick: Tick, payload: bytes
    ) -> None:
        clock = time.perf_counter_ns
        while budget.take():
            try:
                conn = self.conn if self.conn is not None else await self.connect()
                t0 = clock()
                with trio.fail_after(self.cfg.op_timeout):
                    await conn.round_trip(payload)
                phase.latencies_ns.append(clock() - t0)
                phase.ops += 1
                phase.bytes += len(payload)
            except (
                OSError,
                TLSDError,
                ValueError,
                trio.TooSlowError,
                trio.BrokenResourceError,
            ) as exc:
                phase.errors[error_kind(exc)] += 1
                await self.drop()
                await trio.sleep(0.01)
            tick(1)

    async def _bulk(self, phase: PhaseResult, budget: _Budget, tick: Tick, payload: bytes) -> None:
        clock = time.perf_counter_ns
        try:
            conn = self.conn if self.conn is not None else await self.connect()
        except (OSError, TLSDError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            phase.errors[error_kind(exc)] += 1
            tick(1)
            return
        size = len(payload)
        started: deque[int] = deque()
        window = trio.Semaphore(self.cfg.window)
        sender_done = False
        # The receiver may be waiting for bytes when the sender finds its
        # budget spent with nothing in flight: then nothing more will come.
        receiving = trio.CancelScope()

        async def sender() -> None:
            nonlocal sender_done
            while budget.take():
                await window.acquire()
                started.append(clock())
                await conn.send(payload)
            sender_done = True
            if not started:
                receiving.cancel()

        async def receiver() -> None:
            pending = 0
            with receiving:
                while not (sender_done and not started):
                    pending += await conn.receive_some()
                    while pending >= size and started:
                        pending -= size
                        phase.latencies_ns.append(clock() - started.popleft())
                        phase.ops += 1
                        phase.bytes += size
                        window.release()
                        tick(1)

        try:
            # A stalled stream is a failure, not a hang: the phase has a deadline.
            with trio.fail_after(self._bulk_deadline()):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    await receiver()
        except (BaseExceptionGroup, *_OP_ERRORS) as caught:
            failure = _expected_failure(caught)
            lost = max(len(started), 1)
            phase.errors[error_kind(failure)] += lost
            tick(lost)
            await self.drop()

    def _bulk_deadline(self) -> float:
        cfg = self.cfg
        if cfg.duration is not None:
            return cfg.duration + cfg.op_timeout
        return cfg.op_timeout * max(1, cfg.count // cfg.window + 1)


_OP_ERRORS = (OSError, TLSDError, ValueError, trio.TooSlowError, trio.BrokenResourceError)


def _expected_failure(caught: BaseException) -> BaseException:
    """The one failure inside *caught* (a group from a nursery), if it is an expected kind."""
    exc = caught
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) >= 1:
        exc = exc.exceptions[0]
    if not isinstance(exc, _OP_ERRORS):
        raise caught
    return exc


async def run_worker(
    cfg: BenchConfig,
    clients: int,
    tick: Tick,
    phase_barrier: Callable[[], Awaitable[None]],
) -> list[PhaseResult]:
    """Run *clients* clients through every phase of *cfg*; raw results per size.

    *phase_barrier* is awaited before each phase so that several worker
    processes start every size together. *tick* is called with the number
    of operations finished, for the progress bar.
    """
    settings = cfg.client_settings()
    pool = [_Client(cfg, settings) for _ in range(clients)]
    results: list[PhaseResult] = []
    try:
        if cfg.resume and pool:
            await pool[0].prime_session()  # one session, in the cache they share
        async with trio.open_nursery() as nursery:
            for client in pool:
                if cfg.mode != "handshake":
                    nursery.start_soon(_connect_quietly, client)
        for size in cfg.phase_sizes:
            await phase_barrier()
            phase = PhaseResult(size)
            phase.start = time.monotonic()
            async with trio.open_nursery() as nursery:
                for client in pool:
                    nursery.start_soon(client.run_phase, phase, phase.start, tick)
            phase.end = time.monotonic()
            results.append(phase)
    finally:
        with trio.CancelScope(shield=True):
            for client in pool:
                await client.drop()
    return results


async def _connect_quietly(client: _Client) -> None:
    # A client that cannot connect now tries again in its first operation,
    # where the failure is counted.
    try:
        await client.connect()
    except (OSError, TLSDError, trio.TooSlowError, trio.BrokenResourceError):
        client.conn = None
