"""A server's contexts: session-ticket keys that outlive reloads and rotate (sans-IO).

OpenSSL seals and opens session tickets with keys that live in an SSL_CTX,
made at random when the context is created. It uses the keys of the context
a connection was *made* from (its "session context"), even after a
servername callback has moved the connection to another context with
``SSL_set_SSL_CTX``. The bindings under pyOpenSSL can neither set nor read
those keys, nor install OpenSSL's ticket-key callback. So
:class:`ServerContexts` works with contexts alone:

* A **front** context holds the ticket keys and every setting but a
  certificate. Every connection is made from a front, whose
  :class:`~.contexts.CertificateSwitch` moves it at once to the context of
  the certificate it presents. A reload reads the files into new certificate
  contexts and gives them to the switch; the fronts, so the keys, stay, and
  a session from before the reload resumes after it.
* A **rotation** makes a new front (new keys) and keeps the one before it,
  whose tickets still open; the one before that is dropped, and a ticket it
  sealed costs a full handshake. Which front a connection is made from is
  read from the ClientHello: the key name a ticket starts with
  (:mod:`.client_hello`). A front learns its own key name when it is made by
  sealing a ticket for itself: a handshake between two engines in memory,
  then the ClientHello of a resumption, parsed like any other.
* A client that resumes with the previous key gets its new tickets sealed
  with that key too (re-sealing them with the current key takes the ticket
  key callback): they open until the next rotation, then it makes one full
  handshake.

Nothing here reads a clock: the service calls :meth:`ServerContexts.rotate`
on its schedule. A front is frozen once it has made a connection, like any
context; what changes is which front is current and what the switch holds,
each one attribute store, read whole by a handshake in another thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL

from .client_hello import dtls_ticket_key_name, tls_ticket_key_name
from .contexts import (
    CertificateSwitch,
    KeyLog,
    build_certificates,
    build_client_context,
    build_front_context,
)
from .dtls_records import build_hello_verify_request, parse_client_hello
from .engine import DTLSEngine, TLSEngine
from .errors import TLSDError
from .settings import ClientSettings, ServerSettings

__all__ = ["ServerContexts", "TicketFront", "issues_tickets"]

logger = logging.getLogger(__name__)

_STEPS = 10  # a handshake in memory takes 2-4; more means it is stuck


def issues_tickets(settings: ServerSettings) -> bool:
    """Whether a server with *settings* gives session tickets (never with pre-shared keys)."""
    return settings.session_tickets and not settings.psk_enabled


@dataclass(frozen=True)
class TicketFront:
    """A context connections are made from, and the name of its ticket key (None: unknown)."""

    context: SSL.Context
    key_name: bytes | None


class ServerContexts:
    """What a TLS or DTLS server makes its connections from; see the module docstring.

    Built from *settings* (reading every file: ConfigError names a bad one),
    or around one *context* of your own, which is used as it is: it does not
    rotate, and the first :meth:`reload` replaces it with contexts built from
    *settings*.
    """

    def __init__(
        self, settings: ServerSettings, *, dtls: bool = False, context: SSL.Context | None = None
    ) -> None:
        self.settings = settings
        self.dtls = dtls
        self.rotations = 0
        """Ticket key rotations so far."""
        self._keylog = KeyLog(settings.keylog_file) if settings.keylog_file else None
        self._switch: CertificateSwitch | None = None
        self._fronts: tuple[TicketFront, ...]
        if context is not None:
            self._fronts = (TicketFront(context, None),)
            return
        switch = CertificateSwitch(build_certificates(settings, dtls=dtls, keylog=self._keylog))
        self._fronts = (self._new_front(switch),)
        self._switch = switch

    @property
    def tickets(self) -> bool:
        """Whether connections get session tickets (not with pre-shared keys)."""
        return issues_tickets(self.settings)

    @property
    def current(self) -> SSL.Context:
        """The front that seals new tickets."""
        return self._fronts[0].context

    @property
    def fronts(self) -> tuple[TicketFront, ...]:
        """The current front, then the previous one (after a rotation)."""
        return self._fronts

    def for_ticket(self, key_name: bytes | None) -> SSL.Context:
        """The front holding the key named *key_name*; the current one if none does."""
        if key_name is not None:
            for front in self._fronts:
                if front.key_name == key_name:
                    return front.context
        return self._fronts[0].context

    def for_tls_hello(self, data: bytes) -> SSL.Context | None:
        """The front for a TLS connection that began with *data*; None: read more first.

        With one front there is nothing to choose and no need to wait.
        """
        fronts = self._fronts
        if len(fronts) == 1:
            return fronts[0].context
        peek = tls_ticket_key_name(data)
        return None if peek is None else self.for_ticket(peek.key_name)

    def for_datagram(self, datagram: bytes) -> SSL.Context:
        """The front for a DTLS peer whose (verified) ClientHello is *datagram*."""
        if len(self._fronts) == 1:
            return self._fronts[0].context
        return self.for_ticket(dtls_ticket_key_name(datagram))

    def reload(self) -> None:
        """Read the certificate files again, for new handshakes; the ticket keys stay.

        Raises ConfigError, having changed nothing, if a file is bad.
        """
        self.prepare_reload()()

    def prepare_reload(self) -> Callable[[], None]:
        """Read the certificate files now; the call returned puts them in use, and cannot fail.

        Raises ConfigError, having changed nothing, if a file is bad: a
        service serving TLS and DTLS reads both before it changes either.
        """
        certificates = build_certificates(self.settings, dtls=self.dtls, keylog=self._keylog)
        switch = self._switch
        if switch is not None and self.tickets:

            def use_certificates() -> None:
                switch.certificates = certificates

            return use_certificates
        # No ticket keys to keep (tickets off, pre-shared keys, or a context
        # given to us): a new front too, so that what the front itself holds
        # is read again (TLS 1.3 looks its PSK up before the switch).
        new_switch = CertificateSwitch(certificates)
        front = self._new_front(new_switch)

        def use_contexts() -> None:
            self._fronts = (front,)
            self._switch = new_switch

        return use_contexts

    def rotate(self) -> bool:
        """New ticket keys for new tickets; the current ones still open theirs until the next.

        False, and nothing changes, when there are no tickets or the
        context was given. Raises ConfigError, having changed nothing, if a
        file the front reads (the client CA) is bad.
        """
        if self._switch is None or not self.tickets:
            return False
        self._fronts = (self._new_front(self._switch), self._fronts[0])
        self.rotations += 1
        return True

    def _new_front(self, switch: CertificateSwitch) -> TicketFront:
        settings = self.settings
        ctx = build_front_context(settings, switch, dtls=self.dtls, keylog=self._keylog)
        if not self.tickets:
            return TicketFront(ctx, None)
        try:
            key_name = _learn_key_name(ctx, settings, self.dtls)
        except (TLSDError, SSL.Error) as exc:
            key_name = None
            logger.warning("could not learn the session-ticket key name: %s", exc)
        if key_name is None:
            logger.warning(
                "tickets sealed by these keys will not resume once the keys are rotated:"
                " their key name is unknown"
            )
        return TicketFront(ctx, key_name)


def _learn_key_name(front: SSL.Context, settings: ServerSettings, dtls: bool) -> bytes | None:
    """Seal a ticket with *front*'s key in memory and read its name from a ClientHello."""
    client_settings = ClientSettings(
        verify=False,
        min_version=settings.min_version,
        max_version=settings.max_version,
        ciphers=settings.ciphers,
        alpn=settings.alpn,
        mtu=settings.mtu,
    )
    client_ctx = build_client_context(client_settings, dtls=dtls)
    if dtls:
        return _learn_over_dtls(front, client_ctx, settings.mtu)
    client = TLSEngine.client(client_ctx, None, check_hostname=False)
    server = TLSEngine.server(front)
    # This connection is ours alone: it asks for no client certificate.
    server.connection.set_verify(SSL.VERIFY_NONE)
    for _ in range(_STEPS):
        client_done = client.do_handshake()
        server.receive_bytes(client.bytes_to_send())
        server_done = server.do_handshake()
        client.receive_bytes(server.bytes_to_send())
        if client_done and server_done:
            break
    client.receive(1)  # TLS 1.3 tickets arrive after the handshake
    again = TLSEngine.client(client_ctx, None, check_hostname=False, session=client.session)
    again.do_handshake()
    peek = tls_ticket_key_name(again.bytes_to_send())
    return peek.key_name if peek is not None else None


def _learn_over_dtls(front: SSL.Context, client_ctx: SSL.Context, mtu: int) -> bytes | None:
    client = DTLSEngine.connect(client_ctx, None, mtu=mtu, check_hostname=False)
    client.do_handshake()
    hello = client.datagrams_to_send()[0]
    # The front takes any cookie (ours are checked before a peer reaches it).
    client.receive_datagram(build_hello_verify_request(parse_client_hello(hello), b"\0" * 16))
    client.do_handshake()
    server = DTLSEngine.accept(front, client.datagrams_to_send()[0], mtu=mtu)
    server.connection.set_verify(SSL.VERIFY_NONE)
    server.do_handshake()
    for _ in range(_STEPS):
        for src, dst in ((server, client), (client, server)):
            for datagram in src.datagrams_to_send():
                dst.receive_datagram(datagram)
                dst.do_handshake()
        if client.handshake_done and server.handshake_done:
            break
    session = client.session
    again = DTLSEngine.connect(client_ctx, None, mtu=mtu, check_hostname=False, session=session)
    again.do_handshake()
    return dtls_ticket_key_name(again.datagrams_to_send()[0])
