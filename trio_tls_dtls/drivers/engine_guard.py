"""EngineGuard: one thread per SSL object, and the one inline-or-thread decision.

Every engine call a :class:`~.tls.stream.TLSStream` or a
:class:`~.dtls.channel.DTLSChannel` makes goes through its guard, which keeps
two things in one place:

The rule: one SSL object, one thread at a time
    A pyOpenSSL ``Connection`` must not be used by two threads at once. On
    the event loop that holds by itself (Trio switches tasks only at
    ``await``), so an inline call costs nothing extra. An offloaded call
    breaks it: while a worker thread runs it, another task of the same
    connection (a receiver while the sender encrypts a large record) could
    reach the engine. So an offloaded call holds the guard's lock for as
    long as the thread runs, and an inline call waits for that lock, but
    only if it is held: when it is free (nearly always), an inline call is
    a plain function call with no lock taken and no schedule point.

    *Invariant*: an offloaded call is never abandoned on cancellation
    (``CryptoOffload.run`` uses ``trio.to_thread.run_sync`` without
    ``abandon_on_cancel``). The thread is still using the SSL object, so the
    lock is released only when the thread has returned; the cancellation
    takes effect right after.

    The lock is made on the first offloaded call and dropped again when it
    is released with nobody waiting: an idle connection, or one whose
    crypto all ran inline, keeps no lock (each ``trio.Lock`` is a few
    hundred bytes of per-connection memory).

The decision: inline or in a thread
    A thread hop costs ≈ 77 to 116 µs of CPU; public-key work costs more than
    that, and encrypting a small record far less (see
    docs/explanation/threading.rst). :func:`handshake_step_is_costly` is
    the cost model of a handshake step (does it do public-key work at all?)
    and :func:`handshake_step_is_expensive` says whether that work is worth
    several hops by itself (RSA, verifying a certificate chain);
    :meth:`EngineGuard.offloads_handshake_step` and
    :meth:`EngineGuard.offloads_records` combine them with what the
    :class:`~trio_tls_dtls.OffloadSettings` allow and, for ``"auto"``, with
    the load (:meth:`~.offload.CryptoOffload.offloads_handshake_step`: a
    second core, a backlog on the loop). The drivers never decide
    themselves. The engine only reports facts about its state; it makes no
    decision.
    Records: a TLS stream asks :meth:`EngineGuard.record` with the size of
    each send and each large read; a DTLS datagram is one record of at most
    16 KiB, always cheaper than a hop, so a channel runs its records inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from ..core.engine import TLSEngine
from .offload import CryptoOffload

__all__ = ["EngineGuard", "handshake_step_is_costly", "handshake_step_is_expensive"]

T = TypeVar("T")


def handshake_step_is_costly(engine: TLSEngine) -> bool:
    """Whether the engine's next handshake step is likely to do public-key work.

    A server's expensive step answers the ClientHello (key exchange and
    signature: ≈ 250 µs for ECDSA P-256, more for RSA keys), so every step
    from the ClientHello's arrival until it has sent its first flight
    counts; a step before any of the ClientHello arrived does nothing. After
    that only verifying a client certificate costs as much (≈ 350 µs);
    reading the client's Finished and issuing tickets is ≈ 50 µs, less than
    a thread hop. A client's later steps verify the server's chain and
    signature, so all of its steps count.
    """
    if not engine.server_side:
        return True
    if not engine.sent_first_flight:
        return not engine.awaiting_client_hello
    return engine.verifies_peer


def handshake_step_is_expensive(engine: TLSEngine) -> bool:
    """Whether a costly step costs several thread hops by itself, whatever the load.

    A server's answer to the ClientHello is, with an RSA key (≈ 600 µs for
    RSA-2048, several ms for larger keys); so is any later step that
    verifies the peer's certificate chain. An ECDSA signature (≈ 250 µs) is
    worth a hop only when the loop has other work waiting.
    """
    if not engine.sent_first_flight:
        return engine.server_side and engine.signs_with_rsa
    return engine.verifies_peer


class EngineGuard:
    """The gate every engine call of one connection goes through (see the module docstring).

    One per :class:`~trio_tls_dtls.TLSStream` or :class:`~trio_tls_dtls.DTLSChannel`;
    *offload* is the thread pool shared by many connections (a fresh one with
    the default settings if None).
    """

    # Slots: this object lives as long as its connection.
    __slots__ = ("_engine", "_lock", "offload")

    def __init__(self, engine: TLSEngine, offload: CryptoOffload | None = None) -> None:
        self._engine = engine
        self.offload = offload if offload is not None else CryptoOffload()
        self._lock: trio.Lock | None = None

    @property
    def busy(self) -> bool:
        """True while an engine call runs in a thread (or waits to follow one)."""
        lock = self._lock
        return lock is not None and lock.locked()

    # -- the decision ----------------------------------------------------------

    def offloads_handshake_step(self) -> bool:
        """Whether the next handshake step goes to a thread."""
        engine = self._engine
        offload = self.offload
        if not offload.offloads_handshakes() or not handshake_step_is_costly(engine):
            return False
        return offload.offloads_handshake_step(expensive=handshake_step_is_expensive(engine))

    def offloads_records(self, nbytes: int) -> bool:
        """Whether encrypting or decrypting *nbytes* in one call goes to a thread.

        Drivers also ask this ahead of time, to size a read so that one hop
        can carry it all.
        """
        return self.offload.offloads_records(nbytes)

    # -- running engine calls --------------------------------------------------

    async def handshake_step(self) -> bool:
        """Advance the handshake (``engine.do_handshake``), inline or in a thread."""
        if self.offloads_handshake_step():
            return await self._in_thread(self._engine.do_handshake)
        return await self.inline(self._engine.do_handshake)

    async def record(
        self, fn: Callable[[], T], nbytes: int, *, in_thread: Callable[[], T] | None = None
    ) -> T:
        """Run *fn*, which encrypts or decrypts *nbytes*, inline or in a thread.

        *in_thread*, if given, is the call to make instead when it goes to a
        thread (a batch that decrypts more at once: one hop should carry all
        it can).
        """
        if self.offloads_records(nbytes):
            return await self._in_thread(fn if in_thread is None else in_thread)
        # As inline(fn), written out: one coroutine frame less per record.
        lock = self._lock
        if lock is None or not lock.locked():
            return fn()
        return await self._after_offloaded_call(lock, fn)

    async def inline(self, fn: Callable[[], T]) -> T:
        """Run the cheap engine call *fn* on the loop, after any offloaded call ends.

        No lock, and no schedule point, when no call is offloaded.
        """
        lock = self._lock
        if lock is None or not lock.locked():
            return fn()
        return await self._after_offloaded_call(lock, fn)

    async def _after_offloaded_call(self, lock: trio.Lock, fn: Callable[[], T]) -> T:
        await lock.acquire()
        try:
            return fn()
        finally:
            self._release(lock)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.Lock()
        await lock.acquire()
        try:
            # Not abandoned on cancellation (see the module docstring): the
            # lock is released only once the thread has let go of the engine.
            return await self.offload.run(fn)
        finally:
            self._release(lock)

    def _release(self, lock: trio.Lock) -> None:
        lock.release()
        # trio hands a released lock straight to the next waiter. If none
        # took it, no task refers to it any more: drop it (per-connection
        # memory) and let the next offloaded call make a new one.
        if not lock.locked() and self._lock is lock:
            self._lock = None
