"""What every ``--workers`` worker inherits from the supervisor, and when to make it anew.

The supervisor (:mod:`.workers`) calls :class:`SharedStateSource` as its
*prepare*: the first call reads every file into
:class:`~trio_tls_dtls.core.ticket_keys.ServerContexts` (with their
session-ticket keys) and makes or reads the DTLS cookie secret, before any
worker is forked, so every worker holds the same keys and secret. A later
call, for a new generation of workers, reads the certificate files again
into the *same* contexts, so the ticket keys stay and a session resumes on
the new workers, and gives them new keys if a rotation is due.

:meth:`SharedStateSource.reload_due` is the supervisor's *reload_due*: it
says when to roll the workers without a signal, when the certificate files
changed (:mod:`.file_watch`, every ``reload_interval``) or the ticket keys
are due (every ``ticket_key_rotation``). The parent only ever changes its
own copy of the contexts; running workers keep theirs until they are
replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..core.dtls_cookie import CookieSecrets
from ..core.errors import TLSDError
from ..core.settings import ServerSettings
from ..core.ticket_keys import ServerContexts, issues_tickets
from ..drivers.dtls.server import cookie_secrets_for
from .file_watch import FileWatch, watched_files

__all__ = ["SharedState", "SharedStateSource", "shared_state_factory"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedState:
    """What every worker inherits from the parent: one set of keys for all.

    The contexts carry the session-ticket keys (made in the parent, so the
    same in every worker); *cookies* is the DTLS cookie secret.
    """

    tls: ServerContexts | None
    dtls: ServerContexts | None
    cookies: CookieSecrets | None


class SharedStateSource:
    """*prepare* and *reload_due* for a :class:`Supervisor`; see :func:`shared_state_factory`."""

    def __init__(self, settings: ServerSettings, *, tls: bool, dtls: bool) -> None:
        self.settings = settings
        self.tls, self.dtls = tls, dtls
        self._random_cookies = None
        if dtls and settings.cookie_secret_file is None:
            self._random_cookies = cookie_secrets_for(settings)
        self._state: SharedState | None = None
        self._watch = FileWatch(watched_files(settings))
        self._next_look: float | None = None
        self._next_rotation: float | None = None
        self._rotation_due = False

    def __call__(self) -> SharedState:
        settings = self.settings
        cookies = self._random_cookies
        if self.dtls and settings.cookie_secret_file is not None:
            cookies = cookie_secrets_for(settings)
        state = self._state
        if state is None:
            self._state = state = SharedState(
                tls=ServerContexts(settings) if self.tls else None,
                dtls=ServerContexts(settings, dtls=True) if self.dtls else None,
                cookies=cookies,
            )
            return state
        # What is read now is what the next look compares with: a SIGHUP
        # for changed files must not roll the workers a second time.
        self._watch.changed()
        contexts = [c for c in (state.tls, state.dtls) if c is not None]
        rotated = self._rotation_due and self._rotate(contexts)
        try:
            # Both protocols' files are read before either changes.
            commits = [c.prepare_reload() for c in contexts]
        except TLSDError as exc:
            if not rotated:
                raise
            logger.error("keeping the old certificates: %s", exc)
            commits = []
        for commit in commits:
            commit()
        self._state = state = SharedState(tls=state.tls, dtls=state.dtls, cookies=cookies)
        return state

    def _rotate(self, contexts: list[ServerContexts]) -> bool:
        self._rotation_due = False
        try:
            rotated = [c.rotate() for c in contexts]  # every one, not up to the first
        except TLSDError as exc:
            logger.error("session-ticket key rotation failed, keeping the keys in use: %s", exc)
            return False
        return any(rotated)

    def reload_due(self, now: float) -> str | None:
        """Why the workers should be rolled now, or None."""
        settings = self.settings
        rotation, interval = settings.ticket_key_rotation, settings.reload_interval
        if rotation and issues_tickets(settings):
            if self._next_rotation is None:
                self._next_rotation = now + rotation
            elif now >= self._next_rotation:
                self._next_rotation = now + rotation
                self._rotation_due = True
                return "session-ticket keys due to rotate"
        if interval and (self._next_look is None or now >= self._next_look):
            self._next_look = now + interval
            if changed := self._watch.changed():
                return FileWatch.describe(changed)
        return None


def shared_state_factory(
    settings: ServerSettings, *, tls: bool = True, dtls: bool = True
) -> Callable[[], SharedState]:
    """A *prepare* function for :class:`Supervisor`, to run in the parent.

    The first call builds the contexts (with their session-ticket keys) from
    the files in *settings*; each later call reads the certificate files
    again into the same contexts, so the keys stay, and rotates the keys
    when its ``reload_due`` (pass it to the Supervisor) said they were due.
    The cookie secret is read from ``settings.cookie_secret_file`` on each
    call when one is set; otherwise one random secret is made now, once,
    and every call (every reload) returns that same secret.
    """
    return SharedStateSource(settings, tls=tls, dtls=dtls)
