"""The crypto thread pool: worker threads for engine calls, bounded per process.

OpenSSL's public-key work (a server's ECDHE and signature, a client's
verification of the chain) takes hundreds of microseconds to milliseconds.
Done on the event loop, every other connection waits for it. cffi releases
the GIL while OpenSSL runs, so the same work in a worker thread lets the loop
keep serving and lets several handshakes use several cores.

A thread hop is not free (≈ 77 µs measured on our reference machine), which
is more than encrypting a 64 KiB record costs with AES-GCM. So records stay
on the loop unless a single call moves at least ``record_threshold`` bytes.
docs/performance.rst records the measurements behind the defaults.

:class:`CryptoOffload` is the pool and what its settings allow; the decision
for each engine call (is this step costly? is the pool worth a hop now?) and
the rule that one SSL object is used by one thread at a time are the
:class:`~trio_tls_dtls.drivers.engine_guard.EngineGuard`'s, one per
connection. A worker thread never races the loop over an SSL object because
every offloaded call goes through its connection's guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from ..core.settings import OffloadSettings

__all__ = ["CryptoOffload"]

T = TypeVar("T")


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
    ) -> None:
        self.settings = settings if settings is not None else OffloadSettings()
        self.limiter = (
            limiter if limiter is not None else trio.CapacityLimiter(self.settings.max_threads)
        )

    def offloads_handshakes(self) -> bool:
        """True if the settings send costly handshake steps to a thread.

        Which steps are costly is the EngineGuard's cost model.
        """
        return self.settings.handshakes

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
