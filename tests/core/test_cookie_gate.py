"""The cookie gate, branch by branch, with bytes only (no trio, no sockets).

The datagrams are real where it matters: OpenSSL's own ClientHellos, its
answer to our HelloVerifyRequest, and the records of a real handshake.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW, cookie_exchange, first_client_hello, pump
from trio_tls_dtls.core.contexts import build_server_context
from trio_tls_dtls.core.cookie_gate import Admit, Decision, Deliver, Drop, Reply, decide
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import (
    MAX_DTLS_DATAGRAM,
    ClientHello,
    cookie_input,
    parse_client_hello,
)
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.core.peer_info import Address

SECRETS = CookieSecrets(bytes(range(32)))
OTHER_PEER_ID = b"the ClientHello of an earlier association"


def gate(
    datagram: bytes,
    *,
    address: Address = CLIENT_ADDRESS,
    now: float = NOW,
    known: bytes | None = None,
    admitting: bool = True,
    cookies: CookieSecrets = SECRETS,
) -> Decision:
    return decide(datagram, address, now, cookies, known_hello_id=known, admitting=admitting)


@dataclass
class Hellos:
    client: DTLSEngine
    first: bytes
    """The first ClientHello: no cookie."""
    second: bytes
    """The second ClientHello: the cookie SECRETS issued to CLIENT_ADDRESS at NOW."""

    @property
    def second_id(self) -> bytes:
        return cookie_input(parse_client_hello(self.second))


@pytest.fixture
def hellos(pki: PKIFiles) -> Hellos:
    client, first = first_client_hello(pki)
    return Hellos(client, first, cookie_exchange(client, first, SECRETS))


def with_cookie_byte_flipped(second: bytes, index: int) -> bytes:
    tampered = bytearray(second)
    tampered[second.index(parse_client_hello(second).cookie) + index] ^= 0xFF
    return bytes(tampered)


def smallest_client_hello(template: bytes) -> bytes:
    """A well-formed ClientHello with one cipher suite and no extensions: 67 bytes."""
    hello = parse_client_hello(template)
    body = (
        hello.client_version.to_bytes(2, "big") + hello.random + b"\x00\x00\x00\x02\xc0\x2b\x01\x00"
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + bytes(5) + len(body).to_bytes(3, "big")
    handshake += body
    return b"\x16\xfe\xfd" + bytes(8) + len(handshake).to_bytes(2, "big") + handshake


# -- drops, whoever sends ---------------------------------------------------------------


@pytest.mark.parametrize("known", [None, OTHER_PEER_ID])
@pytest.mark.parametrize("admitting", [True, False])
def test_oversized_and_empty_are_dropped_whoever_sends_them(
    hellos: Hellos, known: bytes | None, admitting: bool
) -> None:
    oversized = hellos.second + bytes(MAX_DTLS_DATAGRAM + 1 - len(hellos.second))
    assert gate(oversized, known=known, admitting=admitting) == Drop("oversized")
    assert gate(b"", known=known, admitting=admitting) == Drop("empty")
    # The largest possible DTLS record is not oversized: its trailing bytes
    # are ignored like any record after the first.
    largest = oversized[:-1]
    assert gate(largest, known=known, admitting=admitting) != Drop("oversized")


@pytest.mark.parametrize(
    "datagram",
    [b"\x17\xfe\xfd" + bytes(60), b"\x15" + bytes(20), b"\x14\xfe\xfd" + bytes(10), b"\x00"],
    ids=["application_data", "alert", "change_cipher_spec", "one_byte"],
)
def test_a_stranger_sending_anything_but_a_handshake_is_dropped(datagram: bytes) -> None:
    assert gate(datagram) == Drop("not_handshake")


def test_a_stranger_sending_a_malformed_client_hello_is_dropped(hellos: Hellos) -> None:
    for datagram in (hellos.first[:40], hellos.first[:-3], b"\x16\xfe\xfd" + bytes(60), b"\x16"):
        assert gate(datagram) == Drop("malformed")


# -- cookies ------------------------------------------------------------------------------


def test_a_cookieless_client_hello_gets_a_hello_verify_request(hellos: Hellos) -> None:
    decision = gate(hellos.first)
    assert isinstance(decision, Reply)
    assert not decision.cookie_rejected
    reply = decision.hello_verify_request
    assert len(reply) <= len(hellos.first)
    assert reply[0] == 22 and reply[13] == 3  # a handshake record, a HelloVerifyRequest
    hello = parse_client_hello(hellos.first)
    assert reply.endswith(SECRETS.generate(CLIENT_ADDRESS, hello, NOW))
    # Stateless: the same datagram at the same time gets the same answer.
    assert gate(hellos.first) == decision


def test_the_reply_earns_admission_for_that_client_only(pki: PKIFiles) -> None:
    """OpenSSL's client answers the gate's reply with a ClientHello the gate admits."""
    client, first = first_client_hello(pki)
    decision = gate(first)
    assert isinstance(decision, Reply)
    client.receive_datagram(decision.hello_verify_request)
    assert not client.do_handshake()
    [second] = client.datagrams_to_send()
    assert gate(second) == Admit(cookie_input(parse_client_hello(second)), replaces_peer=False)
    other_port = (CLIENT_ADDRESS[0], CLIENT_ADDRESS[1] + 1)
    for address in (other_port, ("127.0.0.2", CLIENT_ADDRESS[1]), ("::1", CLIENT_ADDRESS[1])):
        refused = gate(second, address=address)
        assert isinstance(refused, Reply) and refused.cookie_rejected


@pytest.mark.parametrize("index", [0, 5, 31])
def test_a_tampered_cookie_is_rejected_and_answered_again(hellos: Hellos, index: int) -> None:
    decision = gate(with_cookie_byte_flipped(hellos.second, index))
    assert isinstance(decision, Reply) and decision.cookie_rejected
    assert len(decision.hello_verify_request) <= len(hellos.second)


def test_a_cookie_lives_one_to_two_rotation_intervals(hellos: Hellos) -> None:
    interval = SECRETS.rotation_interval
    assert isinstance(gate(hellos.second, now=NOW + interval), Admit)
    expired = gate(hellos.second, now=NOW + 3 * interval)
    assert isinstance(expired, Reply) and expired.cookie_rejected


def test_the_smallest_client_hello_gets_a_smaller_answer(hellos: Hellos) -> None:
    small = smallest_client_hello(hellos.first)
    assert len(small) == 67
    decision = gate(small)
    assert isinstance(decision, Reply)
    assert len(decision.hello_verify_request) == 60


class LongCookies(CookieSecrets):
    """Issues the longest cookie a HelloVerifyRequest can carry (255 bytes)."""

    def generate(self, address: Address, hello: ClientHello, now: float) -> bytes:
        return bytes(255)


def test_no_reply_larger_than_the_datagram(hellos: Hellos) -> None:
    """With 255-byte cookies the answer (283 bytes) outgrows a real ClientHello."""
    long_cookies = LongCookies(bytes(32))
    assert len(hellos.first) < 283
    assert gate(hellos.first, cookies=long_cookies) == Drop("too_small_to_answer")
    padded = hellos.first + bytes(283 - len(hellos.first))  # trailing bytes: a second record
    decision = gate(padded, cookies=long_cookies)
    assert isinstance(decision, Reply) and len(decision.hello_verify_request) == 283


# -- a known peer ---------------------------------------------------------------------------


def test_a_known_peer_s_records_are_delivered(hellos: Hellos, pki: PKIFiles) -> None:
    """Every datagram of a real handshake after the admitting ClientHello, and data after it."""
    server = DTLSEngine.accept(
        build_server_context(pki.server_settings(), dtls=True), hellos.second, mtu=1200
    )
    server.do_handshake()
    seen = []
    for _ in range(10):
        if hellos.client.handshake_done and server.handshake_done:
            break
        pump(server, hellos.client)
        for datagram in hellos.client.datagrams_to_send():
            seen.append(datagram)
            server.receive_datagram(datagram)
            if not server.handshake_done:
                server.do_handshake()
    hellos.client.send(b"application data")
    seen += hellos.client.datagrams_to_send()
    assert len(seen) >= 2
    for datagram in seen:
        for admitting in (True, False):
            assert gate(datagram, known=hellos.second_id, admitting=admitting) == Deliver("record")
            # From a stranger the same bytes earn nothing.
            assert isinstance(gate(datagram, admitting=admitting), Drop)


def test_the_known_peer_fast_path_allocates_no_decision() -> None:
    record = b"\x17\xfe\xfd\x00\x01" + bytes(40)
    first = gate(record, known=OTHER_PEER_ID)
    assert first == Deliver("record")
    assert gate(record + b"more", known=OTHER_PEER_ID) is first


def test_the_known_peer_s_own_client_hello_is_a_retransmission(hellos: Hellos) -> None:
    assert gate(hellos.second, known=hellos.second_id) == Deliver("retransmission")


def test_a_new_valid_client_hello_replaces_the_known_peer(hellos: Hellos) -> None:
    assert gate(hellos.second, known=OTHER_PEER_ID) == Admit(hellos.second_id, replaces_peer=True)


def test_a_known_peer_s_cookieless_client_hello_is_answered(hellos: Hellos) -> None:
    decision = gate(hellos.first, known=hellos.second_id)
    assert isinstance(decision, Reply) and not decision.cookie_rejected


def test_a_known_peer_s_malformed_client_hello_goes_to_its_openssl(hellos: Hellos) -> None:
    for datagram in (hellos.second[:40], hellos.second[:-3]):
        assert gate(datagram, known=hellos.second_id) == Deliver("malformed_hello")


# -- draining -------------------------------------------------------------------------------


def test_a_draining_endpoint_admits_and_answers_nobody(hellos: Hellos) -> None:
    for known in (None, OTHER_PEER_ID, hellos.second_id):
        for datagram in (hellos.first, hellos.second):
            assert gate(datagram, known=known, admitting=False) == Drop("draining")


# -- the decisions themselves ---------------------------------------------------------------


def test_decisions_are_immutable_values() -> None:
    decision = Admit(b"id", replaces_peer=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.hello_id = b"other"  # type: ignore[misc]
    assert decision == Admit(b"id", replaces_peer=False) != Admit(b"id", replaces_peer=True)
    assert Drop("empty") != Deliver("empty")
