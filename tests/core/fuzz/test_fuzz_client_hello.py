"""Fuzzing the real DTLS cookie gate, and the ClientHello from its length fields to OpenSSL.

tests/core/test_dtls_records.py fuzzes the parser with random bytes and byte
flips. Here every datagram goes through :func:`~trio_tls_dtls.core.cookie_gate.decide`,
the very function the endpoint calls, with every state an endpoint can be in
(a stranger or a known peer at the address, admitting or draining), and what
it admits goes on to ``DTLSEngine.accept`` as in the endpoint. Each length
field of a real ClientHello (record, handshake message, fragment,
session_id, cookie, cipher_suites, compression_methods, extensions, and
every single extension) is set to boundary and random values. Whatever the
bytes, every decision must keep the gate's invariants (:func:`check_decision`):
a reply is never larger than its datagram, only a cookie issued to that very
address is admitted, a draining endpoint admits nobody, a known peer's
datagrams that are not ClientHellos reach it, and oversized or empty
datagrams are dropped. The TLS server engine gets the length-field
treatment for TLS ClientHellos.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW, cookie_exchange, first_client_hello, pump
from tests.core.fuzz.mutations import (
    CUTS,
    call,
    check_datagrams,
    mutated,
    probe_dtls,
    probe_tls,
    segments,
)
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.cookie_gate import Admit, Decision, Deliver, Drop, Reply, decide
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import (
    MAX_DTLS_DATAGRAM,
    ClientHello,
    cookie_input,
    parse_client_hello,
)
from trio_tls_dtls.core.engine import DTLSEngine, TLSEngine
from trio_tls_dtls.core.errors import RecordParseError
from trio_tls_dtls.core.peer_info import Address

LengthField = tuple[str, int, int]  # name, offset, width in bytes


def length_fields(hello: bytes, *, dtls: bool) -> list[LengthField]:
    """Every length field of a well-formed, unfragmented ClientHello record."""
    if dtls:
        fields = [("record", 11, 2), ("message", 14, 3), ("fragment_length", 22, 3)]
        pos = 25
    else:
        fields = [("record", 3, 2), ("message", 6, 3)]
        pos = 9
    pos += 2 + 32  # client_version, random
    vectors = [("session_id", 1)] + ([("cookie", 1)] if dtls else [])
    vectors += [("cipher_suites", 2), ("compression_methods", 1)]
    for name, width in vectors:
        fields.append((name, pos, width))
        pos += width + int.from_bytes(hello[pos : pos + width], "big")
    fields.append(("extensions", pos, 2))
    end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
    pos += 2
    while pos + 4 <= end:
        kind = int.from_bytes(hello[pos : pos + 2], "big")
        fields.append((f"extension {kind}", pos + 2, 2))
        pos += 4 + int.from_bytes(hello[pos + 2 : pos + 4], "big")
    assert pos == end == len(hello), "not a single well-formed ClientHello record"
    return fields


def set_length(hello: bytes, field: LengthField, choice: int) -> bytes:
    """*hello* with one length field set to a boundary value or *choice* itself."""
    _, offset, width = field
    old = int.from_bytes(hello[offset : offset + width], "big")
    top = (1 << (8 * width)) - 1
    special = [0, 1, max(old - 1, 0), min(old + 1, top), top]
    value = special[choice] if choice < len(special) else choice & top
    return hello[:offset] + value.to_bytes(width, "big") + hello[offset + width :]


LENGTH_CHOICE = st.integers(0, 4) | st.integers(0, (1 << 24) - 1)


@pytest.fixture(scope="module")
def dtls_server(pki: PKIFiles) -> SSL.Context:
    return build_server_context(pki.server_settings(alpn=("coap",)), dtls=True)


class Handshake(NamedTuple):
    """The datagrams of one real DTLS client, admitted by the gate with SECRETS."""

    first: bytes
    """Its first ClientHello: no cookie."""
    second: bytes
    """Its second ClientHello: with a cookie, as DTLSEngine.accept gets it."""
    records: list[bytes]
    """Everything it sends once admitted: the rest of its handshake, then data."""


@pytest.fixture(scope="module")
def handshake(pki: PKIFiles, dtls_server: SSL.Context) -> Handshake:
    client, first = first_client_hello(pki)
    second = cookie_exchange(client, first, SECRETS)
    server = DTLSEngine.accept(dtls_server, second, mtu=1200)
    server.do_handshake()
    records: list[bytes] = []
    while not (client.handshake_done and server.handshake_done):
        assert len(records) < 10, "the handshake did not converge"
        pump(server, client)
        for datagram in client.datagrams_to_send():
            records.append(datagram)
            server.receive_datagram(datagram)
            if not server.handshake_done:
                server.do_handshake()
    for message in (b"x", b"a message" * 100):
        client.send(message)
        records += client.datagrams_to_send()
    client.close()
    records += client.datagrams_to_send()  # close_notify
    return Handshake(first, second, records)


@pytest.fixture(scope="module")
def second_hello(handshake: Handshake) -> bytes:
    return handshake.second


@pytest.fixture(scope="module")
def tls_server(pki: PKIFiles) -> SSL.Context:
    return build_server_context(pki.server_settings(alpn=("h2",)))


@pytest.fixture(scope="module")
def tls_hello(pki: PKIFiles) -> bytes:
    client_ctx = build_client_context(pki.client_settings(alpn=("h2",)))
    client = TLSEngine.client(client_ctx, "localhost")
    client.do_handshake()
    return client.bytes_to_send()


SECRETS = CookieSecrets(bytes(32))
ADDRESSES: list[Address] = [
    CLIENT_ADDRESS,
    (CLIENT_ADDRESS[0], CLIENT_ADDRESS[1] + 1),
    ("127.0.0.2", CLIENT_ADDRESS[1]),
    ("::1", CLIENT_ADDRESS[1]),
]
OTHER_PEER_ID = b"the ClientHello of an earlier association"


class LongCookies(CookieSecrets):
    """SECRETS, but issuing the longest cookies a HelloVerifyRequest carries (255 bytes).

    Its answer (283 bytes) is longer than many ClientHellos: the one case in
    which the gate must hold back a reply rather than amplify.
    """

    def generate(self, address: Address, hello: ClientHello, now: float) -> bytes:
        return super().generate(address, hello, now).ljust(255, b"\0")


LONG_COOKIES = LongCookies(bytes(32))


def test_length_fields_found(second_hello: bytes, tls_hello: bytes) -> None:
    dtls = [name for name, _, _ in length_fields(second_hello, dtls=True)]
    assert dtls[:7] == [
        "record",
        "message",
        "fragment_length",
        "session_id",
        "cookie",
        "cipher_suites",
        "compression_methods",
    ]
    assert len(dtls) > 10  # and the extensions, one by one
    assert len(length_fields(tls_hello, dtls=False)) > 10


def check_decision(
    decision: Decision,
    datagram: bytes,
    address: Address,
    *,
    known: bytes | None,
    admitting: bool,
    cookies: CookieSecrets,
) -> None:
    """The gate's invariants, for any bytes and any endpoint state."""
    if len(datagram) > MAX_DTLS_DATAGRAM:
        assert decision == Drop("oversized")
    if not datagram:
        assert decision == Drop("empty")
    if isinstance(decision, Reply):
        reply = decision.hello_verify_request
        assert len(reply) <= len(datagram), "amplification"
        assert reply[0] == 22 and reply[13] == 3
        # The cookie in it is one this address can come back with.
        hello = parse_client_hello(datagram)
        assert reply.endswith(cookies.generate(address, hello, NOW))
        assert decision.cookie_rejected == bool(hello.cookie)
    if isinstance(decision, Admit):
        hello = parse_client_hello(datagram)
        assert cookies.verify(hello.cookie, address, hello, NOW), "admitted without a cookie"
        assert decision.hello_id == cookie_input(hello)
        assert decision.hello_id != known, "a retransmission restarted its peer"
        assert decision.replaces_peer == (known is not None)
    if isinstance(decision, Deliver):
        assert known is not None, "delivered to no peer"
    if not admitting:
        assert isinstance(decision, Drop | Deliver), "a draining endpoint let someone in"
    if known is not None and admitting and datagram and len(datagram) <= MAX_DTLS_DATAGRAM:
        try:
            parse_client_hello(datagram)
        except RecordParseError:
            # Not a ClientHello: whatever it is, the peer's OpenSSL judges it.
            assert isinstance(decision, Deliver), "a known peer's datagram was lost"


def gate(
    datagram: bytes,
    address: Address = CLIENT_ADDRESS,
    *,
    known: bytes | None = None,
    admitting: bool = True,
    cookies: CookieSecrets = SECRETS,
) -> Decision:
    """The real gate, its invariants checked."""
    decision = decide(datagram, address, NOW, cookies, known_hello_id=known, admitting=admitting)
    check_decision(decision, datagram, address, known=known, admitting=admitting, cookies=cookies)
    return decision


def through_the_endpoint(context: SSL.Context, datagram: bytes) -> str:
    """What an endpoint that knows nobody makes of *datagram*: how far it got.

    An admitted ClientHello goes on to ``DTLSEngine.accept`` and the first
    handshake step, where OpenSSL parses all of it, as in the endpoint.
    """
    decision = gate(datagram)
    if isinstance(decision, Drop):
        return decision.reason
    if isinstance(decision, Reply):
        return "reply"
    assert isinstance(decision, Admit)
    server = call(lambda: DTLSEngine.accept(context, datagram, mtu=1200))
    if not isinstance(server, DTLSEngine):
        return "refused by OpenSSL"
    step = call(server.do_handshake)
    check_datagrams(server)
    probe_dtls(server, [])
    return "refused by OpenSSL" if isinstance(step, Exception) else "accepted"


def test_every_length_field_at_its_boundaries(
    dtls_server: SSL.Context, second_hello: bytes
) -> None:
    """Deterministic: each field at 0, 1, one less, one more, and its maximum."""
    outcomes = {
        through_the_endpoint(dtls_server, set_length(second_hello, field, choice))
        for field in length_fields(second_hello, dtls=True)
        for choice in range(5)
    }
    # Extension lengths are outside what the cookie covers: those hellos
    # pass the cookie gate, so OpenSSL itself is fuzzed too.
    assert outcomes >= {"malformed", "refused by OpenSSL"}
    assert through_the_endpoint(dtls_server, second_hello) == "accepted"


@given(data=st.data())
def test_fuzz_length_fields_through_the_gate(
    dtls_server: SSL.Context, second_hello: bytes, data: st.DataObject
) -> None:
    fields = length_fields(second_hello, dtls=True)
    hello = second_hello
    for _ in range(data.draw(st.integers(1, 3))):
        field = fields[data.draw(st.integers(0, 1 << 16)) % len(fields)]
        hello = set_length(hello, field, data.draw(LENGTH_CHOICE))
    if data.draw(st.booleans()):
        hello = data.draw(mutated(hello, dtls=True))
    through_the_endpoint(dtls_server, hello)


def endpoint_state(handshake: Handshake) -> st.SearchStrategy[tuple[bytes | None, bool]]:
    """(the known peer's hello id or None, admitting): every state an endpoint can be in."""
    own_id = cookie_input(parse_client_hello(handshake.second))
    known = st.sampled_from([None, OTHER_PEER_ID, own_id])
    return st.tuples(known, st.booleans())


def any_datagram(handshake: Handshake) -> st.SearchStrategy[bytes]:
    """Random bytes, mutated real datagrams, and datagrams around the size limit."""
    real = [handshake.first, handshake.second, *handshake.records]
    mutated_real = st.sampled_from(real).flatmap(
        lambda base: mutated(base, dtls=True, splice_with=tuple(real))
    )
    around_the_limit = st.builds(
        lambda base, size: (base + bytes(size))[:size],
        st.sampled_from(real),
        st.integers(MAX_DTLS_DATAGRAM - 2, MAX_DTLS_DATAGRAM + 2048),
    )
    return st.one_of(st.binary(max_size=400), st.sampled_from(real), mutated_real, around_the_limit)


def test_every_state_keeps_the_invariants(handshake: Handshake) -> None:
    """Deterministic: the real datagrams and the size limits, in every state, from every address."""
    own_id = cookie_input(parse_client_hello(handshake.second))
    limits = [bytes(MAX_DTLS_DATAGRAM), bytes(MAX_DTLS_DATAGRAM + 1), b"", b"\x16"]
    outcomes = set()
    for datagram in [handshake.first, handshake.second, *handshake.records, *limits]:
        for known in (None, OTHER_PEER_ID, own_id):
            for admitting in (True, False):
                for address in ADDRESSES:
                    for cookies in (SECRETS, LONG_COOKIES):
                        decision = gate(
                            datagram, address, known=known, admitting=admitting, cookies=cookies
                        )
                        outcomes.add(type(decision).__name__)
    assert outcomes == {"Drop", "Deliver", "Reply", "Admit"}


@given(data=st.data())
def test_fuzz_every_decision_keeps_the_invariants(
    handshake: Handshake, data: st.DataObject
) -> None:
    datagram = data.draw(any_datagram(handshake))
    known, admitting = data.draw(endpoint_state(handshake))
    address = data.draw(st.sampled_from(ADDRESSES))
    cookies = data.draw(st.sampled_from([SECRETS, LONG_COOKIES]))
    gate(datagram, address, known=known, admitting=admitting, cookies=cookies)


@given(data=st.data())
def test_fuzz_a_known_peer_s_records_reach_it(handshake: Handshake, data: st.DataObject) -> None:
    """Whatever the peer sends once admitted, mutated or not, in any endpoint state."""
    record = data.draw(st.sampled_from(handshake.records))
    if data.draw(st.booleans()):
        record = data.draw(mutated(record, dtls=True, must_differ=True))
    known, admitting = data.draw(endpoint_state(handshake).filter(lambda state: state[0]))
    decision = gate(record, known=known, admitting=admitting)
    if record == b"":
        assert decision == Drop("empty")
    elif record in handshake.records or record[0] != 22:
        assert decision == Deliver("record")


@given(data=st.data())
def test_fuzz_cookie_covers_exactly_the_repeated_fields(
    second_hello: bytes, data: st.DataObject
) -> None:
    """The gate admits a mutated ClientHello iff the cookie and the fields it covers
    are unchanged and it comes from the address the cookie was issued to (then
    the mutation is in fields a client may change, like extensions)."""
    original = parse_client_hello(second_hello)
    hostile = data.draw(mutated(second_hello, dtls=True))
    address = data.draw(st.sampled_from(ADDRESSES))
    decision = gate(hostile, address)
    try:
        hello = parse_client_hello(hostile)
    except RecordParseError:
        assert isinstance(decision, Drop)
        return
    expected = address == CLIENT_ADDRESS and cookie_input(hello) == cookie_input(original)
    assert SECRETS.verify(original.cookie, address, hello, NOW) is expected
    admitted = expected and hello.cookie == original.cookie
    assert isinstance(decision, Admit) is admitted
    if not admitted:
        assert isinstance(decision, Reply)


@given(data=st.data(), cuts=CUTS)
def test_fuzz_tls_client_hello_length_fields(
    tls_server: SSL.Context, tls_hello: bytes, data: st.DataObject, cuts: list[int]
) -> None:
    fields = length_fields(tls_hello, dtls=False)
    hello = tls_hello
    for _ in range(data.draw(st.integers(1, 3))):
        field = fields[data.draw(st.integers(0, 1 << 16)) % len(fields)]
        hello = set_length(hello, field, data.draw(LENGTH_CHOICE))
    server = TLSEngine.server(tls_server)
    assert probe_tls(server, segments(hello, cuts)) == b""
