"""Fuzzing the DTLS engine with hostile datagrams, on both sides of the handshake.

As for TLS: every call returns normally or raises one of DEFINED_ERRORS,
output stays bounded and every datagram fits the MTU; and after the
handshake, no message the real peer did not send is ever delivered, nor one
it sent delivered twice. Mutations know the DTLS framing: record type,
version, epoch, sequence and length, and the handshake fragment header
(message length, message_seq, fragment offset and length).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW, cookie_exchange
from tests.core.fuzz.mutations import (
    MUTATION_PLAN,
    Mutation,
    call,
    check_datagrams,
    mutate,
    mutated,
    probe_dtls,
)
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.core.errors import HandshakeError

MTUS = st.sampled_from([512, 1200])


@dataclass(frozen=True)
class Setup:
    server: SSL.Context
    client: SSL.Context

    def client_engine(self, mtu: int) -> tuple[DTLSEngine, bytes]:
        """A client and its first (cookie-less) ClientHello datagram."""
        client = DTLSEngine.connect(self.client, "localhost", mtu=mtu)
        assert client.do_handshake() is False
        [datagram] = client.datagrams_to_send()
        return client, datagram

    def accepted(self, mtu: int) -> tuple[DTLSEngine, bytes]:
        """A client after the cookie exchange, and its second ClientHello."""
        client, first = self.client_engine(mtu)
        return client, cookie_exchange(client, first, CookieSecrets(bytes(32)))


@pytest.fixture(scope="module", params=["plain", "mtls"])
def setup(request: pytest.FixtureRequest, pki: PKIFiles) -> Setup:
    mutual = request.param == "mtls"
    server = pki.mtls_server_settings() if mutual else pki.server_settings(alpn=("coap",))
    client = pki.client_settings(with_cert=mutual, alpn=("coap",))
    return Setup(build_server_context(server, dtls=True), build_client_context(client, dtls=True))


def honest_run(
    setup: Setup, mtu: int, tamper_at: int, tamper: Callable[[bytes], bytes]
) -> tuple[DTLSEngine, DTLSEngine | None]:
    """A real DTLS handshake, datagram by datagram, with datagram *tamper_at* replaced.

    Datagram 0 is the second ClientHello (the one given to ``accept``); the
    rest alternate flights as OpenSSL writes them, fragmented at *mtu*. Each
    receiver gets every datagram, tampered or not, through probe_dtls.
    """
    client, hello = setup.accepted(mtu)
    if tamper_at == 0:
        hello = tamper(hello)
    accepted = call(lambda: DTLSEngine.accept(setup.server, hello, mtu=mtu))
    if not isinstance(accepted, DTLSEngine):
        return client, None
    server = accepted
    call(server.do_handshake)
    queue = [(client, datagram) for datagram in check_datagrams(server)]
    count = 1
    while queue and count < 40:
        receiver, datagram = queue.pop(0)
        if count == tamper_at:
            datagram = tamper(datagram)
        count += 1
        replies: list[bytes] = []
        probe_dtls(receiver, [datagram], close=False, outbox=replies)
        peer = server if receiver is client else client
        queue += [(peer, reply) for reply in replies]
    return client, server


@given(mtu=MTUS, tamper_at=st.integers(0, 7), plan=MUTATION_PLAN)
def test_handshake_datagram_mutated(
    setup: Setup, mtu: int, tamper_at: int, plan: list[Mutation]
) -> None:
    """Any one datagram of a real handshake mutated: both engines keep their contract.

    The plan is drawn up front: how many datagrams a handshake takes can
    vary (a retransmission on a slow machine), and Hypothesis must see the
    same draws whenever it replays an example.
    """

    def tamper(datagram: bytes) -> bytes:
        return mutate(datagram, plan, dtls=True, splice_with=(datagram,))

    client, server = honest_run(setup, mtu, tamper_at, tamper)
    for engine in (client, server):
        if engine is not None:
            probe_dtls(engine, [])


@given(mtu=MTUS, garbage=st.lists(st.binary(max_size=1400), min_size=1, max_size=4))
@example(mtu=1200, garbage=[b""])  # an empty UDP datagram
def test_accepted_server_random_datagrams(setup: Setup, mtu: int, garbage: list[bytes]) -> None:
    _, hello = setup.accepted(mtu)
    server = DTLSEngine.accept(setup.server, hello, mtu=mtu)
    assert server.do_handshake() is False
    check_datagrams(server)
    assert probe_dtls(server, garbage) == []
    assert not server.handshake_done


@given(mtu=MTUS, data=st.data())
def test_accept_mutated_client_hello(setup: Setup, mtu: int, data: st.DataObject) -> None:
    """``accept`` given any datagram: an engine, or HandshakeError."""
    _, hello = setup.accepted(mtu)
    _, other = setup.client_engine(mtu)
    hostile = data.draw(mutated(hello, dtls=True, splice_with=(hello, other)))
    server = call(lambda: DTLSEngine.accept(setup.server, hostile, mtu=mtu))
    if isinstance(server, DTLSEngine):
        call(server.do_handshake)  # where OpenSSL parses the whole ClientHello
        check_datagrams(server)
        probe_dtls(server, [])


def test_accept_empty_datagram(setup: Setup) -> None:
    """Regression (found by test_handshake_datagram_mutated): ``accept(b"")`` leaked a
    bare ``OpenSSL.SSL.Error([])`` from the memory BIO's refusal of an empty write."""
    with pytest.raises(HandshakeError, match="empty datagram"):
        DTLSEngine.accept(setup.server, b"", mtu=1200)


def test_empty_datagram_is_ignored(setup: Setup) -> None:
    """Regression: ``receive_datagram(b"")`` leaked ``OpenSSL.SSL.WantReadError``; an
    empty UDP datagram carries no record and changes nothing."""
    client, _ = setup.client_engine(1200)
    client.receive_datagram(b"")
    assert client.do_handshake() is False
    assert client.datagrams_to_send() == []


@st.composite
def dtls_records(draw: st.DrawFn) -> bytes:
    """Random bytes, or behind a DTLS 1.0/1.2 record header of any epoch and length."""
    body = draw(st.binary(max_size=1400))
    if draw(st.booleans()):
        return body
    header = (
        bytes([draw(st.sampled_from([20, 21, 22, 23]))])
        + draw(st.sampled_from([b"\xfe\xfd", b"\xfe\xff"]))
        + draw(st.integers(0, 2)).to_bytes(2, "big")
        + draw(st.integers(0, 8)).to_bytes(6, "big")
    )
    length = draw(st.sampled_from([len(body), 0, 0xFFFF]) | st.integers(0, 0xFFFF))
    return header + length.to_bytes(2, "big") + body


@given(mtu=MTUS, garbage=st.lists(dtls_records(), min_size=1, max_size=4))
@example(mtu=1200, garbage=[b""])  # an empty UDP datagram
def test_client_random_datagrams(setup: Setup, mtu: int, garbage: list[bytes]) -> None:
    client, _ = setup.client_engine(mtu)
    assert probe_dtls(client, garbage) == []
    assert not client.handshake_done


@given(mtu=MTUS, data=st.data())
def test_client_mutated_hello_verify_request(setup: Setup, mtu: int, data: st.DataObject) -> None:
    client, first = setup.client_engine(mtu)
    hello = parse_client_hello(first)
    cookie = CookieSecrets(bytes(32)).generate(CLIENT_ADDRESS, hello, NOW)
    hvr = build_hello_verify_request(hello, cookie)
    assert probe_dtls(client, [data.draw(mutated(hvr, dtls=True, splice_with=(first,)))]) == []
    assert not client.handshake_done


def connected(setup: Setup, mtu: int) -> tuple[DTLSEngine, DTLSEngine]:
    client, server = honest_run(setup, mtu, -1, lambda datagram: datagram)
    assert server is not None and client.handshake_done and server.handshake_done
    return client, server


@given(
    mtu=MTUS,
    to_server=st.booleans(),
    messages=st.lists(st.binary(min_size=1, max_size=400), min_size=1, max_size=5),
    data=st.data(),
)
def test_mutated_application_datagrams_are_never_accepted(
    setup: Setup, mtu: int, to_server: bool, messages: list[bytes], data: st.DataObject
) -> None:
    """Mutated, replayed and spliced datagrams after a real handshake: only messages
    the peer really sent are delivered, each at most as often as it was sent."""
    client, server = connected(setup, mtu)
    sender, receiver = (client, server) if to_server else (server, client)
    for message in messages:
        sender.send_message(message)
    real = check_datagrams(sender)
    hostile = [
        data.draw(
            st.sampled_from(real)
            | mutated(data.draw(st.sampled_from(real)), dtls=True, splice_with=tuple(real))
        )
        for _ in range(data.draw(st.integers(1, 2 * len(real))))
    ]
    delivered = probe_dtls(receiver, hostile)
    assert not Counter(delivered) - Counter(messages), "a message nobody sent, or a replay"


@pytest.mark.parametrize("mtu", [512, 1200])
def test_unmutated_application_datagrams_arrive_once(setup: Setup, mtu: int) -> None:
    """The harness itself: real datagrams arrive, and their replays are dropped."""
    client, server = connected(setup, mtu)
    client.send_message(b"one")
    client.send_message(b"two")
    real = check_datagrams(client)
    assert probe_dtls(server, real + real) == [b"one", b"two"]
