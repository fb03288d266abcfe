"""Small concurrency helpers shared by the TLS and DTLS drivers."""

from __future__ import annotations

from types import TracebackType

import trio

__all__ = ["ConflictDetector"]


class ConflictDetector:
    """Raises BusyResourceError when two tasks use one direction of a stream at once.

    ``trio.abc`` streams and channels allow one sender and one receiver at a
    time; a second concurrent caller is a bug in the caller, reported loudly.
    """

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False
