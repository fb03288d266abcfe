"""The crypto thread pool: worker threads for engine calls, bounded per process.

OpenSSL's public-key work (a server's ECDHE and signature, a client's
verification of the chain) takes hundreds of microseconds to milliseconds.
Done on the event loop, every other connection waits for it. cffi releases
the GIL while OpenSSL runs, so the same work in a worker thread lets the loop
keep serving and lets several handshakes use several cores.

A thread hop is not free (≈ 77 to 116 µs of CPU measured on our reference
machine), which is more than encrypting a 64 KiB record costs with AES-GCM.
So records stay on the loop unless a single call moves at least
``record_threshold`` bytes. docs/performance.rst records the measurements
behind the defaults.

When a hop pays for a handshake step (``OffloadSettings.handshakes="auto"``,
the default): a thread buys concurrency, never less work. It pays only if
another core can run the step while the loop goes on, so never when this
loop has one core to itself (its CPU affinity says so; the service also
counts a cgroup CPU quota and gives each of ``--workers`` its share).
With a core to spare, an *expensive* step (an RSA signature, verifying a
certificate chain: a millisecond or more that would stall every other
connection) always goes; an ordinary one (an ECDSA server's answer to a
ClientHello, ≈ 0.3 ms) goes only when the loop has a *backlog*, other tasks
ready to run that the step would hold up, and the machine is not already
busy on every core (its load average below the cores this process may
use). An idle loop runs it inline: nobody is waiting, and the hop would
only add its own CPU.

:class:`CryptoOffload` is the pool and what its settings allow; the decision
for each engine call (is this step costly? is the pool worth a hop now?) and
the rule that one SSL object is used by one thread at a time are the
:class:`~trio_tls_dtls.drivers.engine_guard.EngineGuard`'s, one per
connection. A worker thread never races the loop over an SSL object because
every offloaded call goes through its connection's guard.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar

import trio

from ..core.settings import OffloadSettings

__all__ = ["CryptoOffload", "usable_cores"]

T = TypeVar("T")

# "A backlog": at least this many other tasks ready to run on the loop.
BACKLOG_TASKS = 1
# The load average is read at most this often (seconds; it is a minute's average).
_LOAD_REFRESH = 1.0


def usable_cores() -> int:
    """The cores in this process's CPU affinity mask (``taskset``, a cpuset).

    The service passes a figure that also counts a cgroup CPU quota and
    divides the cores among ``--workers`` (:mod:`trio_tls_dtls.service.cpu_quota`).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _machine_busy(cores: int) -> bool:
    """True if the load average says every core this process may use is taken."""
    try:
        return os.getloadavg()[0] >= cores
    except OSError:  # unknown: assume there is room
        return False


class CryptoOffload:
    """Runs crypto inline or in a bounded pool of worker threads.

    One instance is shared by every connection of a server (or by every
    client connection of a Trio run), so ``max_threads`` bounds the whole
    process's crypto threads, and :attr:`queue_depth` shows the backlog.
    """

    def __init__(
        self,
        settings: OffloadSettings | None = None,
        *,
        limiter: trio.CapacityLimiter | None = None,
        cores: int | None = None,
    ) -> None:
        self.settings = settings if settings is not None else OffloadSettings()
        self.limiter = (
            limiter if limiter is not None else trio.CapacityLimiter(self.settings.max_threads)
        )
        self.cores = cores if cores is not None else usable_cores()
        """The cores this loop may count on; with one, ``"auto"`` never offloads."""
        self._busy = False
        self._busy_checked = -math.inf

    def offloads_handshakes(self) -> bool:
        """True if the settings may send costly handshake steps to a thread.

        Which steps are costly is the EngineGuard's cost model; whether one
        goes now is :meth:`offloads_handshake_step`.
        """
        return self.settings.handshakes is not False

    def offloads_handshake_step(self, *, expensive: bool) -> bool:
        """Whether a costly handshake step goes to a thread now (see the module docstring).

        *expensive*: the step costs much more than a hop by itself (an RSA
        signature, verifying a certificate), not just more than one.
        """
        mode = self.settings.handshakes
        if isinstance(mode, bool):  # forced either way
            return mode
        if self.cores < 2:
            return False  # no second core for the thread: the hop buys nothing
        if expensive:
            return True
        if trio.lowlevel.current_statistics().tasks_runnable < BACKLOG_TASKS:
            return False  # nobody waits for the loop: run it now
        return not self._machine_busy()

    def _machine_busy(self) -> bool:
        now = trio.current_time()
        if now - self._busy_checked >= _LOAD_REFRESH:
            self._busy = _machine_busy(self.cores)
            self._busy_checked = now
        return self._busy

    def offloads_records(self, nbytes: int) -> bool:
        """True if encrypting or decrypting *nbytes* at once is worth a thread hop."""
        threshold = self.settings.record_threshold
        return threshold > 0 and nbytes >= threshold

    async def run(self, fn: Callable[[], T]) -> T:
        """Run *fn* in a worker thread under the limiter, and wait for it.

        Not abandoned on cancellation: the caller owns an SSL object that
        the thread is using, and must not touch it until the thread is done.
        A cancel arriving meanwhile takes effect right after.
        """
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    @property
    def queue_depth(self) -> int:
        """Crypto calls waiting for a thread right now."""
        return self.limiter.statistics().tasks_waiting

    @property
    def busy_threads(self) -> int:
        """Crypto calls running in threads right now."""
        return self.limiter.borrowed_tokens


_client_offloads: trio.lowlevel.RunVar[dict[OffloadSettings, CryptoOffload]] = trio.lowlevel.RunVar(
    "trio_tls_dtls_client_offloads"
)


def shared_offload(settings: OffloadSettings) -> CryptoOffload:
    """The CryptoOffload shared by all clients of this Trio run with these settings."""
    try:
        table = _client_offloads.get()
    except LookupError:
        table = {}
        _client_offloads.set(table)
    offload = table.get(settings)
    if offload is None:
        offload = table[settings] = CryptoOffload(settings)
    return offload
