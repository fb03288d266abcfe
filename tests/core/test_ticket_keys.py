"""Session-ticket keys that survive reloads and rotate: engines pumped in memory.

A "session from before" is a client session taken after a full handshake;
it resumes if the server's next handshake reports ``session_reused``. The
server side is made exactly as the drivers make it: the front chosen by
:class:`ServerContexts` from the client's first flight.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW
from trio_tls_dtls.core import _ossl
from trio_tls_dtls.core.client_hello import (
    KEY_NAME_SIZE,
    MAX_PEEK,
    TicketPeek,
    dtls_ticket_key_name,
    tls_ticket_key_name,
)
from trio_tls_dtls.core.contexts import build_server_context, client_context
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine, TLSEngine
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.core.settings import CertificateSettings, ClientSettings, ServerSettings
from trio_tls_dtls.core.ticket_keys import ServerContexts

KINDS = ["tls-1.2", "tls-1.3", "dtls"]


def copy_pki(pki: PKIFiles, folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "server.pem", folder / "server.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(0o600)
    return cert, key


def server_settings(kind: str, cert: Path, key: Path, **options: object) -> ServerSettings:
    if kind.startswith("tls-"):
        options["max_version"] = kind[4:]
    return ServerSettings(certificate=CertificateSettings(cert, key), **options)  # type: ignore[arg-type]


def first_flight(client: TLSEngine) -> bytes:
    assert not client.do_handshake()
    if isinstance(client, DTLSEngine):
        [datagram] = client.datagrams_to_send()
        return datagram
    return client.bytes_to_send()


def connect(
    kind: str, contexts: ServerContexts, client_settings: ClientSettings, session: object = None
) -> tuple[TLSEngine, TLSEngine]:
    """A handshake made as the drivers make it; (client, server) once both are done."""
    dtls = kind == "dtls"
    ctx = client_context(client_settings, dtls=dtls)
    if dtls:
        client: TLSEngine = DTLSEngine.connect(ctx, "localhost", mtu=1200, session=session)  # type: ignore[arg-type]
        hello = first_flight(client)
        cookie = CookieSecrets.random().generate(CLIENT_ADDRESS, parse_client_hello(hello), NOW)
        client.receive_datagram(build_hello_verify_request(parse_client_hello(hello), cookie))  # type: ignore[attr-defined]
        second = first_flight(client)
        server: TLSEngine = DTLSEngine.accept(contexts.for_datagram(second), second, mtu=1200)
    else:
        client = TLSEngine.client(ctx, "localhost", session=session)  # type: ignore[arg-type]
        hello = first_flight(client)
        front = contexts.for_tls_hello(hello)
        assert front is not None  # a whole ClientHello, in one piece
        server = TLSEngine.server(front)
        server.receive_bytes(hello)
    for _ in range(10):
        server.do_handshake()
        client.receive_bytes(server.bytes_to_send())
        client.do_handshake()
        server.receive_bytes(client.bytes_to_send())
        if client.handshake_done and server.handshake_done:
            client.receive(1)  # TLS 1.3 tickets come after the handshake
            return client, server
    raise AssertionError("handshake did not converge")


def resumes(kind: str, contexts: ServerContexts, client: ClientSettings, session: object) -> bool:
    _, server = connect(kind, contexts, client, session)
    return _ossl.session_reused(server.connection)


def served_serial(server: TLSEngine) -> int:
    cert = server.connection.get_certificate()
    assert cert is not None
    return int(cert.get_serial_number())


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_from_before_a_reload_resumes_after_it(
    kind: str, pki: PKIFiles, tmp_path: Path
) -> None:
    cert, key = copy_pki(pki, tmp_path)
    contexts = ServerContexts(server_settings(kind, cert, key), dtls=kind == "dtls")
    client_settings = pki.client_settings()
    client, first = connect(kind, contexts, client_settings)
    assert served_serial(first) == pki.pki.server.cert.serial_number
    session = client.session

    fresh = pki.pki.issue_server()
    cert.write_bytes(fresh.cert_pem)
    key.write_bytes(fresh.key_pem)
    contexts.reload()
    assert resumes(kind, contexts, client_settings, session)
    # A full handshake after the reload presents the new certificate.
    _, full = connect(kind, contexts, pki.client_settings())
    assert not _ossl.session_reused(full.connection)
    assert served_serial(full) == fresh.cert.serial_number


@pytest.mark.parametrize("kind", KINDS)
def test_the_previous_key_resumes_after_one_rotation_and_not_after_two(
    kind: str, pki: PKIFiles, tmp_path: Path
) -> None:
    cert, key = copy_pki(pki, tmp_path)
    contexts = ServerContexts(server_settings(kind, cert, key), dtls=kind == "dtls")
    client_settings = pki.client_settings()
    client, _ = connect(kind, contexts, client_settings)
    session = client.session
    assert contexts.rotate()
    assert resumes(kind, contexts, client_settings, session)
    assert contexts.rotate()
    assert not resumes(kind, contexts, client_settings, session)
    assert contexts.rotations == 2
    # A full handshake now gets a ticket for the current key, which resumes.
    client, _ = connect(kind, contexts, client_settings)
    assert resumes(kind, contexts, client_settings, client.session)


def test_rotation_keeps_two_fronts_with_distinct_key_names(pki: PKIFiles) -> None:
    contexts = ServerContexts(pki.server_settings())
    [only] = contexts.fronts
    assert only.key_name is not None and len(only.key_name) == KEY_NAME_SIZE
    contexts.rotate()
    contexts.rotate()
    current, previous = contexts.fronts
    assert current.key_name != previous.key_name
    assert only.key_name not in (current.key_name, previous.key_name)
    # A name nobody knows (or none) gets the current front: a full handshake there.
    assert contexts.for_ticket(b"\0" * KEY_NAME_SIZE) is current.context
    assert contexts.for_ticket(None) is current.context
    assert contexts.for_ticket(previous.key_name) is previous.context


def test_a_bad_file_on_reload_changes_nothing(pki: PKIFiles, tmp_path: Path) -> None:
    cert, key = copy_pki(pki, tmp_path)
    contexts = ServerContexts(server_settings("tls-1.3", cert, key))
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"server\.key"):
        contexts.reload()
    _, server = connect("tls-1.3", contexts, pki.client_settings())
    assert served_serial(server) == pki.pki.server.cert.serial_number


def test_the_switch_still_serves_sni_certificates_after_a_reload(
    pki: PKIFiles, tmp_path: Path
) -> None:
    other = pki.write_issued("other", pki.pki.issue_server(["other.test"]))
    other = CertificateSettings(other.cert_file, other.key_file, server_names=("other.test",))
    settings = pki.server_settings(sni_certificates=(other,))
    contexts = ServerContexts(settings)
    contexts.reload()
    for name, expected in (("other.test", "other.test"), ("localhost", "localhost")):
        ctx = client_context(pki.client_settings())
        client = TLSEngine.client(ctx, name)
        server = TLSEngine.server(contexts.current)
        server.receive_bytes(first_flight(client))
        server.do_handshake()
        client.receive_bytes(server.bytes_to_send())
        assert client.do_handshake()
        peer = client.connection.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        [common_name] = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert common_name.value == expected


def test_a_given_context_is_used_as_it_is_until_a_reload(pki: PKIFiles) -> None:
    settings = pki.server_settings()
    own = build_server_context(settings)
    contexts = ServerContexts(settings, context=own)
    assert contexts.current is own
    assert contexts.for_tls_hello(b"") is own  # one front: nothing to wait for
    assert not contexts.rotate()  # its keys are its own
    contexts.reload()
    assert contexts.current is not own


def test_no_tickets_no_rotation(pki: PKIFiles) -> None:
    contexts = ServerContexts(pki.server_settings(session_tickets=False))
    assert contexts.fronts[0].key_name is None
    assert not contexts.rotate()
    assert len(contexts.fronts) == 1


def test_client_certificates_required_still_learn_the_key_name(pki: PKIFiles) -> None:
    contexts = ServerContexts(pki.mtls_server_settings(), dtls=True)
    assert contexts.fronts[0].key_name is not None
    client_settings = pki.client_settings(with_cert=True)
    client, server = connect("dtls", contexts, client_settings)
    assert server.connection.get_peer_certificate() is not None  # still asked for
    contexts.rotate()
    assert resumes("dtls", contexts, client_settings, client.session)
    with pytest.raises(Exception, match="certificate"):  # and still required
        connect("dtls", contexts, pki.client_settings())


# -- reading the key name out of a ClientHello ---------------------------------------


def test_key_name_read_from_tls_hellos_in_pieces(pki: PKIFiles) -> None:
    contexts = ServerContexts(pki.server_settings(max_version="1.2"))
    client_settings = pki.client_settings()
    client, _ = connect("tls-1.2", contexts, client_settings)
    again = TLSEngine.client(client_context(client_settings), "localhost", session=client.session)
    hello = first_flight(again)
    name = contexts.fronts[0].key_name
    assert tls_ticket_key_name(hello) == TicketPeek(name)
    for cut in (0, 3, 5, len(hello) - 1):
        assert tls_ticket_key_name(hello[:cut]) is None  # more, please
    # The same message split over two records reads the same.
    body = hello[5:]
    split = b"".join(
        bytes([22]) + hello[1:3] + len(part).to_bytes(2, "big") + part
        for part in (body[:40], body[40:])
    )
    assert tls_ticket_key_name(split) == TicketPeek(name)
    assert tls_ticket_key_name(split[:-1]) is None
    # A fresh ClientHello has no ticket.
    fresh = TLSEngine.client(client_context(pki.client_settings()), "localhost")
    assert tls_ticket_key_name(first_flight(fresh)) == TicketPeek(None)


def test_not_a_client_hello_is_no_ticket_at_once() -> None:
    assert tls_ticket_key_name(b"GET / HTTP/1.1\r\n\r\n") == TicketPeek(None)
    assert tls_ticket_key_name(b"\x16\x03\x01\x00\x00") == TicketPeek(None)  # empty record
    assert tls_ticket_key_name(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == TicketPeek(None)
    assert dtls_ticket_key_name(b"") is None
    # A record longer than TLS allows is not waited for.
    assert tls_ticket_key_name(b"\x16\x03\x01\x48\x01" + b"\0" * 10) == TicketPeek(None)


def test_the_peek_stops_at_its_bound() -> None:
    # Records of a ClientHello that never ends: undecided until MAX_PEEK, then no ticket.
    record = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff" + b"\0" * (0x4000 - 4)
    more = b"\x16\x03\x01\x40\x00" + b"\0" * 0x4000
    data = record + more * 2
    assert tls_ticket_key_name(data) is None
    data += more * 2
    assert len(data) > MAX_PEEK
    assert tls_ticket_key_name(data) == TicketPeek(None)


@given(st.binary(max_size=600))
def test_the_peek_never_raises(data: bytes) -> None:
    peek = tls_ticket_key_name(b"\x16\x03\x01" + data)
    assert peek is None or peek.key_name is None or len(peek.key_name) == KEY_NAME_SIZE
    name = dtls_ticket_key_name(b"\x16\xfe\xfd" + data)
    assert name is None or len(name) == KEY_NAME_SIZE


def test_a_dtls_hello_with_a_ticket_names_its_key(pki: PKIFiles) -> None:
    contexts = ServerContexts(pki.server_settings(), dtls=True)
    client_settings = pki.client_settings()
    client, _ = connect("dtls", contexts, client_settings)
    ctx = client_context(client_settings, dtls=True)
    again = DTLSEngine.connect(ctx, "localhost", mtu=1200, session=client.session)
    hello = first_flight(again)
    assert dtls_ticket_key_name(hello) == contexts.fronts[0].key_name
    fresh = DTLSEngine.connect(
        client_context(pki.client_settings(), dtls=True), "localhost", mtu=1200
    )
    fresh_hello = first_flight(fresh)
    assert dtls_ticket_key_name(fresh_hello) is None
    # With one front there is nothing to choose; after a rotation the hello picks it.
    contexts.rotate()
    assert contexts.for_datagram(hello) is contexts.fronts[1].context
    assert contexts.for_datagram(fresh_hello) is contexts.current


@pytest.mark.parametrize("name", ["reload_interval", "ticket_key_rotation"])
def test_the_schedules_take_seconds_or_zero_for_off(pki: PKIFiles, name: str) -> None:
    assert getattr(pki.server_settings(**{name: 0}), name) == 0.0
    assert getattr(pki.server_settings(**{name: 5}), name) == 5.0
    for bad in (-1, float("inf"), True, "10"):
        with pytest.raises(ConfigError, match=name):
            pki.server_settings(**{name: bad})


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_pre_shared_keys_reload_through_the_front_and_never_rotate(
    pki: PKIFiles, tmp_path: Path, version: str
) -> None:
    """No tickets with PSKs: a reload makes a new front, whose PSK table TLS 1.3 reads first."""
    old_key, new_key = b"k" * 32, b"n" * 32
    path = tmp_path / "psk.txt"
    path.write_text(f"sensor-1:{old_key.hex()}\n")
    path.chmod(0o600)
    settings = ServerSettings(psk_file=path, min_version=version, max_version=version)
    contexts = ServerContexts(settings)
    assert not contexts.tickets and contexts.fronts[0].key_name is None
    assert not contexts.rotate()

    def handshake_with(key: bytes) -> bool:
        client_settings = ClientSettings(
            psk_identity="sensor-1", psk_key=key, min_version=version, max_version=version
        )
        client = TLSEngine.client(client_context(client_settings), "localhost")
        server = TLSEngine.server(contexts.current)
        try:
            for _ in range(10):
                client.do_handshake()
                server.receive_bytes(client.bytes_to_send())
                server.do_handshake()
                client.receive_bytes(server.bytes_to_send())
                if client.handshake_done and server.handshake_done:
                    return True
        except Exception:
            return False
        return False

    assert handshake_with(old_key)
    path.write_text(f"sensor-1:{new_key.hex()}\n")
    contexts.reload()
    assert handshake_with(new_key)
    assert not handshake_with(old_key)
