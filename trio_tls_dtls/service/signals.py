"""What a signal means to a serving process, and the exit status it ends with.

One table for every process that serves or supervises (``trio-tlsd serve``
as a single process, each ``--workers`` worker, and the supervisor that forks
them), so that an operator's ``kill -TERM``, ``kill -HUP`` and Ctrl-C mean
the same thing whichever process gets them:

========  ===========================================================
SIGINT    stop: the first one drains (no new connections or peers,
SIGTERM   close_notify to each open one, up to ``drain_timeout``);
          a second one, while draining, stops at once
SIGHUP    reload: re-read certificates and keys for new handshakes
========  ===========================================================

The exit status is :data:`EXIT_DRAINED` (0) after a drain, however many
connections the drain timeout had to cut, and :data:`EXIT_STOPPED_AT_ONCE`
(1) once a second signal cut the drain short (or, in the supervisor, when
a worker failed).

:class:`StopRequests` is the drain-then-stop rule as a small state machine
with no I/O and no Trio, so the supervisor (which runs no event loop: it
waits with ``sigtimedwait``) and the Trio loop of
:mod:`trio_tls_dtls.service.drain` share it rather than each keeping its
own ``draining``/``forced`` flags. Anything other than a signal that should
stop a process (a supervisor that has gone away, say) asks through
:meth:`StopRequests.stop_requested`, and so gets the same rule.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "EXIT_DRAINED",
    "EXIT_STOPPED_AT_ONCE",
    "HANDLED_SIGNALS",
    "SIGNAL_MEANINGS",
    "Meaning",
    "Request",
    "StopRequests",
]


class Meaning(enum.Enum):
    """What an operator asks for with a signal."""

    STOP = "stop"
    RELOAD = "reload"


SIGNAL_MEANINGS: Mapping[signal.Signals, Meaning] = {
    signal.SIGINT: Meaning.STOP,
    signal.SIGTERM: Meaning.STOP,
    signal.SIGHUP: Meaning.RELOAD,
}
HANDLED_SIGNALS: tuple[signal.Signals, ...] = tuple(SIGNAL_MEANINGS)

EXIT_DRAINED = 0
EXIT_STOPPED_AT_ONCE = 1


class Request(enum.Enum):
    """What to do now, given a signal and what was asked before."""

    DRAIN = "drain"
    STOP_NOW = "stop now"
    RELOAD = "reload"


@dataclass
class StopRequests:
    """The first stop request drains, any later one stops at once."""

    draining: bool = False
    """A stop was asked for: no new work, and a reload is pointless."""
    forced: bool = False
    """A second stop was asked for while draining."""

    def on_signal(self, signum: int) -> Request | None:
        """The request *signum* makes; None for a signal not in the table."""
        try:
            meaning = SIGNAL_MEANINGS.get(signal.Signals(signum))
        except ValueError:
            return None
        if meaning is Meaning.RELOAD:
            return Request.RELOAD
        if meaning is Meaning.STOP:
            return self.stop_requested()
        return None

    def stop_requested(self) -> Request:
        """Record a stop request (a signal or any other cause); DRAIN or STOP_NOW."""
        if self.draining:
            self.forced = True
            return Request.STOP_NOW
        self.draining = True
        return Request.DRAIN

    def exit_status(self, *, failed: bool = False) -> int:
        """0 after a drain; 1 after a second stop request, or when *failed*."""
        return EXIT_STOPPED_AT_ONCE if self.forced or failed else EXIT_DRAINED
