"""Structure-aware fuzzing of the ClientHello: every length field, parser to engine.

tests/core/test_dtls_records.py fuzzes the parser with random bytes and byte
flips. Here each length field of a real ClientHello (record, handshake
message, fragment, session_id, cookie, cipher_suites, compression_methods,
extensions, and every single extension) is set to boundary and random
values, and the result goes through the whole DTLS server gate: the parser,
the cookie verifier, and ``DTLSEngine.accept``. The TLS server engine gets
the same treatment for TLS ClientHellos.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW, cookie_exchange, first_client_hello
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
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import (
    MAX_COOKIE,
    build_hello_verify_request,
    cookie_input,
    parse_client_hello,
)
from trio_tls_dtls.core.engine import DTLSEngine, TLSEngine
from trio_tls_dtls.core.errors import RecordParseError

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


@pytest.fixture(scope="module")
def second_hello(pki: PKIFiles) -> bytes:
    """A real second ClientHello: with a cookie, as DTLSEngine.accept gets it."""
    client, first = first_client_hello(pki)
    return cookie_exchange(client, first, SECRETS)


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


def gate(context: SSL.Context, datagram: bytes) -> str:
    """The DTLS server's path for a datagram from a new address: parse, verify, accept.

    Returns how far the datagram got.
    """
    try:
        hello = parse_client_hello(datagram)
    except RecordParseError:
        return "malformed"
    assert len(hello.random) == 32 and len(hello.session_id) <= 32
    assert len(hello.cookie) <= MAX_COOKIE
    build_hello_verify_request(hello, bytes(32))
    if not SECRETS.verify(hello.cookie, CLIENT_ADDRESS, hello, NOW):
        return "bad cookie"
    server = call(lambda: DTLSEngine.accept(context, datagram, mtu=1200))
    if not isinstance(server, DTLSEngine):
        return "refused by OpenSSL"
    # The server's first handshake step is where OpenSSL parses it all.
    step = call(server.do_handshake)
    check_datagrams(server)
    probe_dtls(server, [])
    return "refused by OpenSSL" if isinstance(step, Exception) else "accepted"


def test_every_length_field_at_its_boundaries(
    dtls_server: SSL.Context, second_hello: bytes
) -> None:
    """Deterministic: each field at 0, 1, one less, one more, and its maximum."""
    outcomes = {
        gate(dtls_server, set_length(second_hello, field, choice))
        for field in length_fields(second_hello, dtls=True)
        for choice in range(5)
    }
    # Extension lengths are outside what the cookie covers: those hellos
    # pass the cookie gate, so OpenSSL itself is fuzzed too.
    assert outcomes >= {"malformed", "refused by OpenSSL"}
    assert gate(dtls_server, second_hello) == "accepted"


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
    gate(dtls_server, hello)


@given(data=st.data())
def test_fuzz_cookie_covers_exactly_the_repeated_fields(
    second_hello: bytes, data: st.DataObject
) -> None:
    """A cookie verifies for a mutated ClientHello iff the fields it covers are unchanged
    (then the mutation is in fields a client may change, like extensions)."""
    original = parse_client_hello(second_hello)
    hostile = data.draw(mutated(second_hello, dtls=True))
    try:
        hello = parse_client_hello(hostile)
    except RecordParseError:
        return
    address = data.draw(st.sampled_from([CLIENT_ADDRESS, ("127.0.0.1", 40001), ("::1", 40000)]))
    expected = address == CLIENT_ADDRESS and cookie_input(hello) == cookie_input(original)
    assert SECRETS.verify(original.cookie, address, hello, NOW) is expected
    assert SECRETS.verify(hello.cookie, address, hello, NOW) is (
        expected and hello.cookie == original.cookie
    )


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
