"""The DTLS ClientHello parser and HelloVerifyRequest builder (sans-IO), with fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import (
    ClientHello,
    build_hello_verify_request,
    cookie_input,
    looks_like_client_hello,
    parse_client_hello,
)
from trio_tls_dtls.core.errors import RecordParseError


@pytest.fixture(scope="module")
def real_hello(pki: PKIFiles) -> bytes:
    return first_client_hello(pki)[1]


def test_parses_openssl_client_hello(real_hello: bytes) -> None:
    hello = parse_client_hello(real_hello)
    assert hello.cookie == b""
    assert hello.client_version == 0xFEFD  # DTLS 1.2
    assert len(hello.random) == 32
    assert hello.message_seq == 0
    assert hello.record_sequence == 0
    assert hello.compression_methods == b"\x00"
    assert len(hello.cipher_suites) >= 2


def test_hello_verify_request_round_trip(pki: PKIFiles) -> None:
    """OpenSSL's client accepts our HelloVerifyRequest and repeats what the cookie covers."""
    client, datagram = first_client_hello(pki)
    hello = parse_client_hello(datagram)
    cookie = CookieSecrets.random().generate(("127.0.0.1", 1), hello, 0.0)
    hvr = build_hello_verify_request(hello, cookie)
    assert len(hvr) < len(datagram)
    assert hvr[:3] == b"\x16\xfe\xff"  # handshake record, DTLS 1.0 version as RFC 6347 asks
    assert hvr[5:11] == datagram[5:11]  # record sequence copied
    client.receive_datagram(hvr)
    assert not client.do_handshake()
    [again] = client.datagrams_to_send()
    second = parse_client_hello(again)
    assert second.cookie == cookie
    assert cookie_input(second) == cookie_input(hello)
    assert second.message_seq == 1


def test_cookie_input_separates_fields() -> None:
    base = {
        "record_sequence": 0,
        "message_seq": 0,
        "client_version": 0xFEFD,
        "random": bytes(32),
        "cookie": b"",
        "compression_methods": b"\x00",
    }
    one = ClientHello(session_id=b"ab", cipher_suites=b"cd", **base)  # type: ignore[arg-type]
    two = ClientHello(session_id=b"a", cipher_suites=b"bcd", **base)  # type: ignore[arg-type]
    assert cookie_input(one) != cookie_input(two)


def test_every_truncation_is_a_parse_error(real_hello: bytes) -> None:
    for size in range(len(real_hello)):
        with pytest.raises(RecordParseError):
            parse_client_hello(real_hello[:size])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 23, "not a handshake record"),
        (1, 0x03, "not a DTLS record"),
        (4, 1, "epoch 0"),
        (13, 2, "not a ClientHello"),
        (21, 1, "fragmented"),
        (25, 0x03, "not a DTLS ClientHello"),
    ],
)
def test_wrong_fields_are_named(real_hello: bytes, offset: int, value: int, message: str) -> None:
    mutated = bytearray(real_hello)
    mutated[offset] = value
    with pytest.raises(RecordParseError, match=message):
        parse_client_hello(bytes(mutated))


def test_trailing_records_are_ignored(real_hello: bytes) -> None:
    assert parse_client_hello(real_hello + b"\x17" * 40) == parse_client_hello(real_hello)


def test_cookie_size_is_checked(real_hello: bytes) -> None:
    hello = parse_client_hello(real_hello)
    for bad in (b"", bytes(256)):
        with pytest.raises(ValueError, match="cookie"):
            build_hello_verify_request(hello, bad)


def _parse_or_error(data: bytes) -> None:
    try:
        hello = parse_client_hello(data)
    except RecordParseError:
        return
    # Whatever parses must be a consistent ClientHello we can answer.
    assert len(hello.random) == 32
    assert len(hello.session_id) <= 32
    assert len(hello.cookie) <= 255
    build_hello_verify_request(hello, bytes(32))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
@example(b"")
@example(b"\x16\xfe\xfd\x00\x00" + bytes(6) + b"\xff\xff")
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_error(data)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_mutated_client_hello(real_hello: bytes, data: st.DataObject) -> None:
    mutated = bytearray(real_hello)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    _parse_or_error(bytes(mutated[:cut]) + data.draw(st.binary(max_size=8)))


def test_the_client_hello_peek(real_hello: bytes) -> None:
    """Four byte comparisons: a handshake record, epoch 0, a client_hello message."""
    assert looks_like_client_hello(real_hello)
    assert looks_like_client_hello(real_hello[:26])
    assert not looks_like_client_hello(real_hello[:25])
    for offset, value in ((0, 23), (3, 1), (4, 1), (13, 16)):
        changed = bytearray(real_hello)
        changed[offset] = value
        assert not looks_like_client_hello(bytes(changed))
