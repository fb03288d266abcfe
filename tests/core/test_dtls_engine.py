"""The DTLS engine pumped in memory: cookie exchange, handshake, datagrams, MTU, close."""

from __future__ import annotations

import pytest

from tests.conftest import PKIFiles
from tests.core.dtls_pair import connected_pair, first_client_hello, pump
from trio_tls_dtls.core.contexts import build_server_context
from trio_tls_dtls.core.dtls_engine import count_records
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.core.errors import DatagramTooLargeError, HandshakeError


def test_handshake_and_datagrams(pki: PKIFiles) -> None:
    client, server = connected_pair(pki)
    assert client.peer_info(None, transport="dtls").protocol == "DTLSv1.2"
    for message in (b"x", b"hello", bytes(range(256)) * 3):
        client.send_message(message)
        pump(client, server)
        assert server.receive_messages() == [message]
    # Several records in flight stay separate datagrams.
    for n in range(5):
        server.send_message(b"%d" % n)
    datagrams = server.datagrams_to_send()
    for datagram in datagrams:
        client.receive_datagram(datagram)
    assert client.receive_messages() == [b"0", b"1", b"2", b"3", b"4"]


def test_every_record_of_a_datagram_is_a_message(pki: PKIFiles) -> None:
    # The engine reads as many messages as the datagrams it was fed hold
    # records, and no more (the read after them could only say "no input").
    client, server = connected_pair(pki)
    for n in range(3):
        client.send_message(b"%d" % n)
    [datagram] = client.datagrams_to_send()  # three records packed in one datagram
    assert count_records(datagram) == 3
    server.receive_datagram(datagram)
    assert server.receive_messages() == [b"0", b"1", b"2"]
    assert server.receive_messages() == []
    # A record cut short is not counted (OpenSSL drops the rest there too).
    client.send_message(b"whole")
    client.send_message(b"cut")
    [datagram] = client.datagrams_to_send()
    assert count_records(datagram[:-1]) == 1
    server.receive_datagram(datagram[:-1])
    assert server.receive_messages() == [b"whole"]
    # Bytes fed otherwise are read until OpenSSL has no more.
    client.send_message(b"a")
    client.send_message(b"b")
    server.receive_bytes(client.bytes_to_send())
    assert server.receive_messages() == [b"a", b"b"]


def test_mutual_tls_identity(pki: PKIFiles) -> None:
    _client, server = connected_pair(
        pki, server_settings=pki.mtls_server_settings(), with_cert=True
    )
    info = server.peer_info(("127.0.0.1", 1), transport="dtls")
    assert info.subject is not None
    assert "client" in info.subject.lower()


def test_mutual_tls_without_client_certificate(pki: PKIFiles) -> None:
    with pytest.raises(HandshakeError, match="DTLS handshake failed: peer did not return"):
        connected_pair(pki, server_settings=pki.mtls_server_settings())


@pytest.mark.parametrize("mtu", [512, 1200, 9000])
def test_mtu_bounds_every_datagram_and_message(pki: PKIFiles, mtu: int) -> None:
    client, _server = connected_pair(pki, mtu=mtu)  # pump() asserts the handshake's sizes
    limit = client.max_message_size
    assert mtu - 100 < limit < mtu
    client.send_message(bytes(limit))
    [datagram] = client.datagrams_to_send()
    assert len(datagram) <= mtu
    with pytest.raises(DatagramTooLargeError, match=f"at most {limit} bytes"):
        client.send_message(bytes(limit + 1))
    with pytest.raises(ValueError, match="empty"):
        client.send_message(b"")


def test_duplicate_and_forged_records_are_dropped(pki: PKIFiles) -> None:
    client, server = connected_pair(pki)
    client.send_message(b"once")
    [datagram] = client.datagrams_to_send()
    server.receive_datagram(datagram)
    assert server.receive_messages() == [b"once"]
    server.receive_datagram(datagram)  # replay: the anti-replay window drops it
    assert server.receive_messages() == []
    forged = bytearray(datagram)
    forged[-1] ^= 1
    server.receive_datagram(bytes(forged))  # fails authentication: dropped silently
    assert server.receive_messages() == []
    client.send_message(b"still fine")
    pump(client, server)
    assert server.receive_messages() == [b"still fine"]


def test_close_notify(pki: PKIFiles) -> None:
    client, server = connected_pair(pki)
    client.close()
    pump(client, server)
    assert server.receive_messages() == []
    assert server.peer_closed


def test_retransmission_timer_runs_during_handshake(pki: PKIFiles) -> None:
    client, _ = first_client_hello(pki)
    assert client.timeout() is not None  # OpenSSL armed its timer with the first flight
    assert client.handle_timeout() is False  # not expired yet: nothing resent


def test_accept_without_cookie_is_refused(pki: PKIFiles) -> None:
    _, datagram = first_client_hello(pki)
    context = build_server_context(pki.server_settings(), dtls=True)
    with pytest.raises(HandshakeError, match="without a cookie"):
        DTLSEngine.accept(context, datagram, mtu=1200)
