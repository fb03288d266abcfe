"""The sans-IO engine, driven by pumping bytes between two engines in memory.

No sockets, no threads, no trio: if these pass, the protocol logic is right
and the drivers only have to move bytes.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls.core.contexts import build_client_context, build_server_context, client_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import HandshakeError, TLSError


def transfer(src: TLSEngine, dst: TLSEngine) -> int:
    data = src.bytes_to_send()
    dst.receive_bytes(data)
    return len(data)


def handshake(client: TLSEngine, server: TLSEngine) -> None:
    """Step both sides until both report the handshake complete."""
    for _ in range(10):
        client_done = client.do_handshake()
        transfer(client, server)
        server_done = server.do_handshake()
        transfer(server, client)
        if client_done and server_done:
            return
    raise AssertionError("handshake did not converge")


def read_all(engine: TLSEngine, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = engine.receive(65536)
        assert chunk, f"stalled after {len(out)} of {size} bytes"
        out += chunk
    return bytes(out)


def make_pair(
    pki: PKIFiles,
    *,
    server_opts: dict | None = None,
    client_opts: dict | None = None,
    hostname: str = "localhost",
    session=None,
) -> tuple[TLSEngine, TLSEngine]:
    server_ctx = build_server_context(pki.server_settings(**(server_opts or {})))
    client_settings = pki.client_settings(**(client_opts or {}))
    client_ctx = build_client_context(client_settings)
    client = TLSEngine.client(
        client_ctx, hostname, session=session, check_hostname=client_settings.check_hostname
    )
    return client, TLSEngine.server(server_ctx)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_handshake_and_echo(pki: PKIFiles, version: str) -> None:
    client, server = make_pair(pki, server_opts={"min_version": version, "max_version": version})
    handshake(client, server)
    assert client.handshake_done and server.handshake_done
    info = client.peer_info(("127.0.0.1", 4433))
    assert info.protocol == f"TLSv{version}"
    assert info.cipher
    assert not info.resumed
    assert info.subject is not None and "CN=localhost" in info.subject

    client.send(b"hello")
    transfer(client, server)
    assert server.receive(100) == b"hello"
    server.send(b"world")
    transfer(server, client)
    assert client.receive(100) == b"world"


def test_receive_without_input_is_a_state_not_an_exception(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    assert server.do_handshake() is False
    handshake(client, server)
    assert server.receive(10) is None
    assert server.bytes_to_send() == b""


def test_one_mebibyte_round_trip(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    handshake(client, server)
    payload = os.urandom(1 << 20)
    client.send(payload)
    transfer(client, server)
    assert read_all(server, len(payload)) == payload


def test_close_notify_from_client(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    handshake(client, server)
    client.send(b"last words")
    client.close()
    transfer(client, server)
    assert server.receive(100) == b"last words"
    assert server.receive(100) == b""
    assert server.peer_closed
    # The server answers with its own close_notify.
    server.close()
    transfer(server, client)
    assert client.receive(100) == b""


def test_close_notify_from_server(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    handshake(client, server)
    server.close()
    transfer(server, client)
    assert client.receive(100) == b""
    assert client.peer_closed
    with pytest.raises(TLSError):
        server.send(b"after close")


def test_truncated_stream_is_an_error(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    handshake(client, server)
    client.send(b"partial")
    data = client.bytes_to_send()
    server.receive_bytes(data[:-3])  # cut the record short, then EOF
    server.receive_eof()
    with pytest.raises(TLSError, match="truncated"):
        server.receive(100)


def test_eof_during_handshake(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    client.do_handshake()
    hello = client.bytes_to_send()
    server.receive_bytes(hello[: len(hello) // 2])
    server.receive_eof()
    with pytest.raises(HandshakeError, match="during the handshake"):
        server.do_handshake()


def test_eof_before_any_client_hello(pki: PKIFiles) -> None:
    _, server = make_pair(pki)
    assert not server.do_handshake()  # nothing yet: answered without OpenSSL
    server.receive_eof()
    assert not server.awaiting_client_hello
    with pytest.raises(HandshakeError, match="during the handshake"):
        server.do_handshake()


def test_garbage_instead_of_client_hello(pki: PKIFiles) -> None:
    _, server = make_pair(pki)
    server.receive_bytes(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    with pytest.raises(HandshakeError) as info:
        server.do_handshake()
    assert info.value.reason  # OpenSSL's own words, e.g. "http request"


def test_untrusted_server_certificate(pki: PKIFiles, other_pki: PKIFiles) -> None:
    server = TLSEngine.server(build_server_context(pki.server_settings()))
    client = TLSEngine.client(build_client_context(other_pki.client_settings()), "localhost")
    with pytest.raises(HandshakeError, match="certificate verify failed") as info:
        handshake(client, server)
    assert "unable to get local issuer certificate" in info.value.reason
    # The client's alert tells the server why.
    alert = client.bytes_to_send()
    server.receive_bytes(alert)
    with pytest.raises(HandshakeError, match="alert"):
        server.do_handshake()


def test_hostname_mismatch(pki: PKIFiles) -> None:
    client, server = make_pair(pki, hostname="www.example.com")
    with pytest.raises(HandshakeError, match="hostname mismatch"):
        handshake(client, server)


def test_ip_address_checked_against_san(pki: PKIFiles) -> None:
    client, server = make_pair(pki, hostname="127.0.0.1")
    handshake(client, server)
    client, server = make_pair(pki, hostname="10.1.2.3")
    with pytest.raises(HandshakeError, match="IP address mismatch"):
        handshake(client, server)


def test_hostname_check_can_be_disabled(pki: PKIFiles) -> None:
    client, server = make_pair(
        pki, hostname="www.example.com", client_opts={"check_hostname": False}
    )
    handshake(client, server)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_mutual_tls(pki: PKIFiles, version: str) -> None:
    server_ctx = build_server_context(
        pki.mtls_server_settings(min_version=version, max_version=version)
    )
    client_ctx = build_client_context(pki.client_settings(with_cert=True))
    client, server = TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(server_ctx)
    handshake(client, server)
    info = server.peer_info(("127.0.0.1", 1))
    assert info.subject is not None and "CN=trio-tlsd client" in info.subject


def test_mutual_tls_rejects_client_without_certificate(pki: PKIFiles) -> None:
    server_ctx = build_server_context(pki.mtls_server_settings(max_version="1.2"))
    client = TLSEngine.client(build_client_context(pki.client_settings()), "localhost")
    server = TLSEngine.server(server_ctx)
    with pytest.raises(HandshakeError, match="did not return a certificate"):
        handshake(client, server)


def test_mutual_tls_rejects_certificate_from_another_ca(pki: PKIFiles, other_pki: PKIFiles) -> None:
    server = TLSEngine.server(build_server_context(pki.mtls_server_settings()))
    settings = pki.client_settings()
    # Trusts our server, but presents a certificate signed by another CA.
    from trio_tls_dtls.core.settings import CertificateSettings

    foreign = CertificateSettings(other_pki.client_cert, other_pki.client_key)
    client_ctx = build_client_context(type(settings)(ca_file=pki.ca, certificate=foreign))
    client = TLSEngine.client(client_ctx, "localhost")
    with pytest.raises(HandshakeError) as info:
        # TLS 1.3: the client finishes first; the server's verdict comes as
        # an alert on the client's next read.
        handshake(client, server)
        client.receive(10)
    assert "certificate" in str(info.value) or "alert" in str(info.value)


def test_optional_client_verification_accepts_anonymous(pki: PKIFiles) -> None:
    server = TLSEngine.server(
        build_server_context(pki.mtls_server_settings(verify_client="optional"))
    )
    client = TLSEngine.client(build_client_context(pki.client_settings()), "localhost")
    handshake(client, server)
    assert server.peer_info(None).certificate is None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_resumption(pki: PKIFiles, version: str) -> None:
    server_ctx = build_server_context(pki.server_settings(min_version=version, max_version=version))
    client_ctx = client_context(pki.client_settings())
    client, server = TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(server_ctx)
    handshake(client, server)
    # TLS 1.3 tickets arrive after the handshake: let the client read them.
    server.send(b"x")
    transfer(server, client)
    assert client.receive(10) == b"x"
    session = client.session
    assert session is not None

    again = TLSEngine.client(client_ctx, "localhost", session=session)
    server2 = TLSEngine.server(server_ctx)
    handshake(again, server2)
    assert again.peer_info(None).resumed
    assert server2.peer_info(None).resumed


def test_alpn(pki: PKIFiles) -> None:
    client, server = make_pair(
        pki, server_opts={"alpn": ("h2", "echo/1")}, client_opts={"alpn": ("echo/1",)}
    )
    handshake(client, server)
    assert client.peer_info(None).alpn == "echo/1"
    assert server.peer_info(None).alpn == "echo/1"


def test_send_before_close_after_close(pki: PKIFiles) -> None:
    client, server = make_pair(pki)
    handshake(client, server)
    client.close()
    client.close()  # idempotent
    with pytest.raises(TLSError, match="after close_notify"):
        client.send(b"x")


def test_close_before_handshake_sends_nothing(pki: PKIFiles) -> None:
    client, _ = make_pair(pki)
    client.close()
    assert client.bytes_to_send() == b""


@pytest.mark.parametrize("mutual", [False, True])
def test_facts_for_the_offload_decision(pki: PKIFiles, mutual: bool) -> None:
    # The drivers' cost model (drivers/engine_guard.py, tested with these
    # steps in tests/drivers/test_engine_guard.py) reads these facts.
    server_settings = pki.mtls_server_settings() if mutual else pki.server_settings()
    client_ctx = build_client_context(pki.client_settings(with_cert=mutual))
    client = TLSEngine.client(client_ctx, "localhost")
    server = TLSEngine.server(build_server_context(server_settings))
    assert not client.sent_first_flight
    assert client.verifies_peer  # verifies the server's chain
    assert not client.do_handshake()
    assert not server.sent_first_flight  # nothing received yet
    assert server.awaiting_client_hello
    assert server.verifies_peer is mutual
    assert not server.signs_with_rsa  # the development PKI's keys are ECDSA
    assert not server.do_handshake()
    assert not server.sent_first_flight  # still no ClientHello: no flight made
    transfer(client, server)
    assert client.sent_first_flight  # the ClientHello
    assert not client.awaiting_client_hello  # a client never waits for one
    assert not server.awaiting_client_hello  # it has arrived
    assert not server.do_handshake()  # answers the ClientHello
    transfer(server, client)
    assert server.sent_first_flight
    assert not server.awaiting_client_hello
    handshake(client, server)


def test_rsa_certificate_is_a_fact_for_the_offload_decision(rsa_pki: PKIFiles) -> None:
    # An RSA signature costs several thread hops by itself (see
    # drivers/engine_guard.py's handshake_step_is_expensive).
    server = TLSEngine.server(build_server_context(rsa_pki.server_settings()))
    assert server.signs_with_rsa
    assert server.signs_with_rsa  # the second answer comes from the per-context cache


def test_release_buffers_keeps_the_connection_working(pki: PKIFiles) -> None:
    # A memory BIO keeps the largest buffer it ever held; release_buffers
    # replaces the empty ones. Nothing the engines hold may be lost.
    client, server = make_pair(pki)
    handshake(client, server)
    assert not server.buffers_grown  # a handshake's flights are smaller than a record
    server.release_buffers()
    big = os.urandom(128 * 1024)
    client.send(big)
    transfer(client, server)
    assert server.buffers_grown
    # Records still wait in the input BIO: that BIO is kept, the other renewed.
    first = server.receive(65536)
    assert first
    server.release_buffers()
    assert first + read_all(server, len(big) - len(first)) == big
    server.release_buffers()
    server.send(big)
    transfer(server, client)
    assert server.buffers_grown  # the output BIO held it all at once
    server.release_buffers()
    assert not server.buffers_grown
    assert read_all(client, len(big)) == big
    client.send(b"after")
    transfer(client, server)
    assert server.receive(100) == b"after"
    # The end of input survives a release: a truncation is still one.
    server.receive_eof()
    server.release_buffers()
    with pytest.raises(TLSError, match="truncated"):
        server.receive(100)
