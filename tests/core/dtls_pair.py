"""A client and a server DTLSEngine wired together in memory, with our cookie exchange."""

from __future__ import annotations

from tests.conftest import PKIFiles
from trio_tls_dtls.core.contexts import build_server_context, client_context
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine

CLIENT_ADDRESS = ("127.0.0.1", 40000)
NOW = 1_800_000_000.0


def first_client_hello(
    pki: PKIFiles, *, mtu: int = 1200, with_cert: bool = False
) -> tuple[DTLSEngine, bytes]:
    """A fresh client engine and the datagram carrying its first ClientHello."""
    settings = pki.client_settings(with_cert=with_cert)
    client = DTLSEngine.connect(client_context(settings, dtls=True), "localhost", mtu=mtu)
    assert not client.do_handshake()
    [datagram] = client.datagrams_to_send()
    return client, datagram


def cookie_exchange(client: DTLSEngine, datagram: bytes, cookies: CookieSecrets) -> bytes:
    """Answer *datagram* with a HelloVerifyRequest; the client's second ClientHello."""
    hello = parse_client_hello(datagram)
    client.receive_datagram(
        build_hello_verify_request(hello, cookies.generate(CLIENT_ADDRESS, hello, NOW))
    )
    assert not client.do_handshake()
    [second] = client.datagrams_to_send()
    return second


def pump(src: DTLSEngine, dst: DTLSEngine) -> int:
    """Deliver every datagram *src* has queued to *dst*, one at a time."""
    datagrams = src.datagrams_to_send()
    for datagram in datagrams:
        assert len(datagram) <= src.mtu
        dst.receive_datagram(datagram)
        if not dst.handshake_done:
            dst.do_handshake()
    return len(datagrams)


def connected_pair(
    pki: PKIFiles, *, server_settings: object = None, mtu: int = 1200, with_cert: bool = False
) -> tuple[DTLSEngine, DTLSEngine]:
    """A client and server engine with the handshake done."""
    settings = server_settings if server_settings is not None else pki.server_settings()
    cookies = CookieSecrets.random()
    client, datagram = first_client_hello(pki, mtu=mtu, with_cert=with_cert)
    second = cookie_exchange(client, datagram, cookies)
    assert cookies.verify(
        parse_client_hello(second).cookie, CLIENT_ADDRESS, parse_client_hello(second), NOW
    )
    server = DTLSEngine.accept(build_server_context(settings, dtls=True), second, mtu=mtu)  # type: ignore[arg-type]
    server.do_handshake()
    for _ in range(10):
        if client.handshake_done and server.handshake_done:
            return client, server
        pump(server, client)
        pump(client, server)
    raise AssertionError("DTLS handshake did not converge")
