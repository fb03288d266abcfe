"""Fuzzing the TLS engine with hostile ciphertext, on both sides of the handshake.

Each test feeds an engine random bytes, or real handshake traffic captured
from a real peer and then mutated, and checks the engine's contract: every
call returns normally or raises one of DEFINED_ERRORS, output stays bounded,
and no plaintext that the real peer did not send is ever delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.core.fuzz.mutations import (
    CUTS,
    DEFINED_ERRORS,
    call,
    mutated,
    probe_tls,
    segments,
)
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import TLSError
from trio_tls_dtls.core.settings import CertificateSettings


@dataclass(frozen=True)
class Setup:
    """A server and a client context that can talk to each other."""

    name: str
    server: SSL.Context
    client: SSL.Context
    hostname: str = "localhost"

    def pair(self) -> tuple[TLSEngine, TLSEngine]:
        return TLSEngine.client(self.client, self.hostname), TLSEngine.server(self.server)


@pytest.fixture(scope="module")
def setups(pki: PKIFiles) -> dict[str, Setup]:
    """Plain; every server callback (SNI, ALPN) and optional client certificates;
    TLS 1.2 mutual TLS, where the client's certificate travels in the clear."""
    other = pki.write_issued("fuzz-sni", pki.pki.issue_server(["other.test"]))
    sni = CertificateSettings(other.cert_file, other.key_file, server_names=("other.test",))
    featured = pki.mtls_server_settings(
        verify_client="optional", alpn=("h2", "echo/1"), sni_certificates=(sni,)
    )
    return {
        "plain": Setup(
            "plain",
            build_server_context(pki.server_settings()),
            build_client_context(pki.client_settings()),
        ),
        "features": Setup(
            "features",
            build_server_context(featured),
            build_client_context(pki.client_settings(with_cert=True, alpn=("echo/1", "x"))),
            hostname="other.test",
        ),
        "mtls12": Setup(
            "mtls12",
            build_server_context(pki.mtls_server_settings(max_version="1.2")),
            build_client_context(pki.client_settings(with_cert=True)),
        ),
    }


SETUP_NAMES = st.sampled_from(["plain", "features", "mtls12"])


@pytest.fixture(scope="module")
def client_hellos(setups: dict[str, Setup]) -> dict[str, bytes]:
    """A real ClientHello from each setup's client."""
    hellos = {}
    for name, setup in setups.items():
        client, _ = setup.pair()
        assert client.do_handshake() is False
        hellos[name] = client.bytes_to_send()
    return hellos


def flights(client: TLSEngine, server: TLSEngine, stop_at: int) -> tuple[TLSEngine, bytes] | None:
    """Run an honest handshake until flight number *stop_at* is written.

    Flights alternate client, server, client, server (ClientHello; the
    server's hello flight; the client's Finished; the server's tickets or
    Finished). Returns the engine that should receive that flight, and the
    flight, undelivered; None if the conversation ended before it.
    """
    client.do_handshake()
    index = 0
    for _ in range(8):
        for src, dst in ((client, server), (server, client)):
            data = src.bytes_to_send()
            if not data:
                continue
            if index == stop_at:
                return dst, data
            index += 1
            dst.receive_bytes(data)
            if dst.handshake_done:
                assert dst.receive(65536) is None  # tickets only, no data
            else:
                dst.do_handshake()
    return None


def handshaken(setup: Setup) -> tuple[TLSEngine, TLSEngine]:
    client, server = setup.pair()
    assert flights(client, server, stop_at=99) is None
    assert client.handshake_done and server.handshake_done
    return client, server


TLS_HANDSHAKE_HEADER = st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03", b"\x17\x03\x03"])


@st.composite
def random_records(draw: st.DrawFn) -> bytes:
    """Random bytes, or random bytes behind a plausible record header."""
    body = draw(st.binary(max_size=1500))
    if draw(st.booleans()):
        return body
    length = draw(st.sampled_from([len(body), 0, 0xFFFF]) | st.integers(0, 0xFFFF))
    return draw(TLS_HANDSHAKE_HEADER) + length.to_bytes(2, "big") + body


@given(name=SETUP_NAMES, raw=random_records(), cuts=CUTS)
@example(name="plain", raw=b"", cuts=[])
@example(name="plain", raw=b"\x16\x03\x01\x00\x00", cuts=[])  # an empty handshake record
def test_server_random_bytes(
    setups: dict[str, Setup], name: str, raw: bytes, cuts: list[int]
) -> None:
    server = TLSEngine.server(setups[name].server)
    assert probe_tls(server, segments(raw, cuts)) == b""
    assert not server.handshake_done


@given(name=SETUP_NAMES, data=st.data(), cuts=CUTS)
def test_server_mutated_client_hello(
    setups: dict[str, Setup],
    client_hellos: dict[str, bytes],
    name: str,
    data: st.DataObject,
    cuts: list[int],
) -> None:
    hello = data.draw(mutated(client_hellos[name], splice_with=tuple(client_hellos.values())))
    server = TLSEngine.server(setups[name].server)
    assert probe_tls(server, segments(hello, cuts)) == b""
    # A ClientHello alone never completes a handshake.
    assert not server.handshake_done


@given(name=SETUP_NAMES, raw=random_records(), cuts=CUTS)
def test_client_random_server_flight(
    setups: dict[str, Setup], name: str, raw: bytes, cuts: list[int]
) -> None:
    client, _ = setups[name].pair()
    assert client.do_handshake() is False
    client.bytes_to_send()
    assert probe_tls(client, segments(raw, cuts)) == b""
    assert not client.handshake_done


@given(
    name=SETUP_NAMES,
    stop_at=st.integers(0, 3),
    garbage_after_real=st.booleans(),
    data=st.data(),
    cuts=CUTS,
)
def test_handshake_flight_mutated_or_followed_by_garbage(
    setups: dict[str, Setup],
    name: str,
    stop_at: int,
    garbage_after_real: bool,
    data: st.DataObject,
    cuts: list[int],
) -> None:
    """An honest handshake up to one flight, which arrives mutated or followed by garbage.

    Even flights go to the server, odd ones to the client, so both sides'
    state machines are fuzzed at every stage of the handshake.
    """
    client, server = setups[name].pair()
    reached = flights(client, server, stop_at)
    assert reached is not None, f"{name}: fewer than {stop_at + 1} flights"
    receiver, flight = reached
    if garbage_after_real:
        hostile = flight + data.draw(random_records() | mutated(flight))
    else:
        hostile = data.draw(mutated(flight, splice_with=(flight,)))
    # Nobody sent application data, so none may come out.
    assert probe_tls(receiver, segments(hostile, cuts)) == b""


@given(
    name=SETUP_NAMES,
    messages=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4),
    close=st.booleans(),
    data=st.data(),
    cuts=CUTS,
)
def test_mutated_application_data_is_never_accepted(
    setups: dict[str, Setup],
    name: str,
    messages: list[bytes],
    close: bool,
    data: st.DataObject,
    cuts: list[int],
) -> None:
    """Mutated records after a real handshake: plaintext delivered is only ever a prefix
    of what the peer sent, and a clean close means the whole stream arrived intact."""
    client, server = handshaken(setups[name])
    for message in messages:
        client.send(message)
    if close:
        client.close()
    records = client.bytes_to_send()
    sent = b"".join(messages)
    hostile = data.draw(mutated(records, must_differ=True))
    delivered = probe_tls(server, segments(hostile, cuts))
    assert sent.startswith(delivered), "the engine delivered plaintext nobody sent"
    if server.peer_closed:
        # Only possible when every record up to close_notify was intact.
        assert delivered == sent
    else:
        # The stream ended (EOF) without an intact close_notify: an error, always.
        failure = call(lambda: server.receive(10))
        assert isinstance(failure, TLSError), failure


@pytest.mark.parametrize("close", [False, True])
def test_unmutated_application_data_arrives(setups: dict[str, Setup], close: bool) -> None:
    """The harness itself: real records all arrive; EOF is clean only after close_notify."""
    client, server = handshaken(setups["plain"])
    client.send(b"hello")
    client.send(b" world")
    if close:
        client.close()
    records = client.bytes_to_send()
    assert probe_tls(server, segments(records, [7, 30])) == b"hello world"
    assert server.peer_closed is close
    if not close:
        assert isinstance(call(lambda: server.receive(10)), TLSError)


def test_defined_errors_are_the_package_errors() -> None:
    """Nothing outside the package's own hierarchy is in the contract."""
    from trio_tls_dtls.core.errors import TLSDError

    assert all(issubclass(error, TLSDError) for error in DEFINED_ERRORS)
    assert not any(issubclass(error, SSL.Error) for error in DEFINED_ERRORS)
