"""The client session cache: ``open_tls_stream``/``open_dtls_channel`` resume by themselves.

Theory of operation
-------------------
A session resumes only on a Context of the family that made it, built from
the same settings (the same trust store, client certificate, ALPN). So the
cache belongs to one :class:`~trio_tls_dtls.core.settings.ClientSettings`
*object* and one family (TLS or DTLS), and lives beside that object's
Contexts (``settings._contexts``, see ``core.contexts.client_context``):
two equal settings objects never share sessions. Within it, sessions are
keyed by ``(host, port, server name)``, least recently used first out.

When a session is worth keeping:

* TLS 1.2 and DTLS 1.2: the server's session ID or ticket is part of the
  handshake, so the session is stored as soon as the handshake ends.
* TLS 1.3: tickets arrive *after* the handshake, and a client reads them
  only while reading data. Each ticket makes OpenSSL replace the
  connection's session with a new one, so "the session is no longer the one
  the handshake ended with" means a ticket has arrived
  (:func:`~trio_tls_dtls.core._ossl.same_session`). The client stream looks
  after each ``receive_some`` and at ``aclose``; a connection that never
  read its tickets leaves the entry as it was.

An entry is dropped when the session it offered did not resume (the server
forgot it, or restarted with new ticket keys: OpenSSL falls back to a full
handshake by itself) or the handshake failed; the next successful handshake
stores a fresh one. A handshake that the server ended with an alert while a
cached session was offered is tried once more without it: a server that
cannot resume (some fail the handshake instead of falling back) then costs a
second handshake, never an error, and its key is marked so that no session is
offered to it again.
OpenSSL also marks a session not resumable when its connection is freed
without close_notify: the next handshake is then a full one, and replaces it.

Threads: no lock. Every step is one or two operations on an OrderedDict,
each atomic under the GIL; two threads racing can at worst lose an insert or
evict one entry too many, which costs one full handshake, never a wrong
session.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict

from OpenSSL import SSL

from ..core.errors import HandshakeError
from ..core.settings import ClientSettings

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "Resumption",
    "SessionCache",
    "SessionKey",
    "session_cache",
]

logger = logging.getLogger(__name__)

SessionKey = tuple[str, int, str]
"""(host as given, port, server name sent and verified)."""

DEFAULT_MAX_SESSIONS = 128


class SessionCache:
    """At most *max_sessions* entries by :data:`SessionKey`, least recently used out first.

    An entry is a session to offer, or a mark that resuming with that server
    failed where a full handshake worked (see :meth:`Resumption.retry_after`):
    no session is offered or kept for a marked key.
    """

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.max_sessions = max_sessions
        self._entries: OrderedDict[SessionKey, SSL.Session | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SessionKey) -> SSL.Session | None:
        """The session to offer for *key* (None if there is none, or the key is marked)."""
        session = self._entries.get(key)
        if session is not None:
            with contextlib.suppress(KeyError):  # dropped by another thread meanwhile
                self._entries.move_to_end(key)
        return session

    def marked(self, key: SessionKey) -> bool:
        return self._entries.get(key, False) is None

    def put(self, key: SessionKey, session: SSL.Session) -> None:
        """Keep *session* for *key*, replacing the one before (not a mark)."""
        if not self.marked(key):
            self._store(key, session)

    def mark(self, key: SessionKey) -> None:
        """Never offer a session for *key* again (within this cache)."""
        self._store(key, None)

    def _store(self, key: SessionKey, entry: SSL.Session | None) -> None:
        entries = self._entries
        entries[key] = entry
        with contextlib.suppress(KeyError):
            entries.move_to_end(key)
        while len(entries) > self.max_sessions:
            try:
                entries.popitem(last=False)
            except KeyError:
                break

    def discard(self, key: SessionKey, session: SSL.Session) -> None:
        """Drop *key*'s entry if it still holds *session* (not a newer one stored since)."""
        if self._entries.get(key) is session:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def session_cache(settings: ClientSettings, *, dtls: bool = False) -> SessionCache:
    """The session cache of this *settings* object for TLS (or DTLS), made on first use."""
    key = "dtls-sessions" if dtls else "tls-sessions"
    cache = settings._contexts.get(key)
    if cache is None:
        # setdefault is atomic on a dict: racing threads still share one cache.
        cache = settings._contexts.setdefault(key, SessionCache())
    assert isinstance(cache, SessionCache)
    return cache


class Resumption:
    """One client connection's dealings with the cache: what it offers, what it keeps.

    An explicit *session* is offered instead of the cached one (and is never
    dropped from the cache, which did not hold it); either way the session
    this connection ends up with replaces the entry.
    """

    __slots__ = ("cache", "from_cache", "key", "offered", "retried")

    def __init__(self, cache: SessionCache, key: SessionKey, session: SSL.Session | None) -> None:
        self.cache = cache
        self.key = key
        self.from_cache = session is None
        self.offered = cache.get(key) if session is None else session
        self.retried = False

    def retry_after(self, exc: HandshakeError) -> bool:
        """A handshake failed: forget the session it offered; try once more without it?

        Some servers fail a resumption attempt instead of falling back to a
        full handshake (OpenSSL sends an internal_error alert when a server
        verifies client certificates but set no session ID context). So a
        handshake that offered a cached session and was ended by an alert
        from the server is retried once with a full handshake; if that works,
        the key is marked and never offered a session again. Other failures
        (a timeout, a lost connection, our own verification) are not retried:
        a session does not cause them, and a server that refuses connections
        should not see each attempt twice.
        """
        if not (self.from_cache and self.offered is not None):
            return False
        self.cache.discard(self.key, self.offered)
        self.offered = None
        if "alert" not in exc.reason:
            return False
        logger.info(
            "handshake resuming a session with %s:%s failed (%s); retrying without it",
            self.key[0],
            self.key[1],
            exc.reason,
        )
        self.retried = True
        return True

    def handshake_done(self, resumed: bool) -> None:
        """The handshake finished; a cached session the server refused goes."""
        if self.retried:
            self.cache.mark(self.key)
        elif not resumed and self.from_cache and self.offered is not None:
            self.cache.discard(self.key, self.offered)

    def keep(self, session: SSL.Session | None) -> None:
        """Store the session this connection established (it resumes later ones)."""
        if session is not None:
            self.cache.put(self.key, session)
