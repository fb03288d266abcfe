"""Interop with third-party TLS peers: the ``openssl`` CLI and Python's ``ssl`` module.

pyOpenSSL runs on the OpenSSL 4.0 inside the ``cryptography`` wheel, while the
``openssl`` command and the stdlib ``ssl`` module use the system's OpenSSL 3.0:
every test here is two TLS implementations agreeing (or refusing) on the wire.
Everything listens on 127.0.0.1.

Each openssl process is started by :func:`openssl_process`, which kills it by
its own PID on the way out, whatever happened. Every wait has a deadline and
waits for a real signal (a marker in the output, the process's exit), never
for a sleep. Two s_client habits shape the tests:

* With stdout on a pipe, its report (session details, ``-msg`` traces) sits in
  a stdio buffer until it exits, while data from the server is written straight
  through. So tests wait for echoed data on stdout but read the report only
  after exit, and cut the echoed line out first: it can land in the middle of a
  buffered report line.
* With ``-no_ign_eof`` (spelled out: ``-quiet`` would imply ``-ign_eof``), end
  of stdin makes s_client send close_notify and exit with status 0; that is how
  a good session ends here. It also keeps s_client's one-letter commands, which
  the renegotiation test needs (``R``); our echoed lines never start with one.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, receive_exactly, running_tls_server
from tests.openssl import (
    CLIENT_SUBJECT,
    OPENSSL_MARKS,
    STEP_TIMEOUT,
    OpenSSLProcess,
    OpenSSLTimeout,
    RecordingEcho,
    assert_s_client_report,
    client_cert_args,
    openssl_process,
    s_client_args,
    s_client_echo_session,
    s_server,
    server_tasks_settled,
    unique_line,
)
from trio_tls_dtls import HandshakeError, TLSStream, open_tls_stream

pytestmark = OPENSSL_MARKS

# How long a refusal that should be immediate (an alert) may take before we
# call it missing.
REFUSAL_TIMEOUT = 2.0

VERSIONS = ["1.2", "1.3"]
VERSION_FLAG = {"1.2": "-tls1_2", "1.3": "-tls1_3"}


# -- 1. openssl s_client against serve_tls -------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_s_client_echo(pki: PKIFiles, version: str) -> None:
    handler = RecordingEcho()
    async with running_tls_server(pki.server_settings(), handler) as server:
        args = s_client_args(port_of(server), pki, VERSION_FLAG[version])
        async with openssl_process(*args) as client:
            report = await s_client_echo_session(client)
    assert_s_client_report(report, version)
    assert "Verification: OK" in report
    [peer] = handler.peers
    assert peer.protocol == f"TLSv{version}"
    assert peer.server_name == "localhost"
    assert peer.certificate is None
    assert server.stats.handshakes_ok == 1
    assert not server.stats.handshakes_failed


@pytest.mark.parametrize("version", VERSIONS)
async def test_s_client_mutual_tls(pki: PKIFiles, version: str) -> None:
    handler = RecordingEcho()
    async with running_tls_server(pki.mtls_server_settings(), handler) as server:
        args = s_client_args(port_of(server), pki, VERSION_FLAG[version], *client_cert_args(pki))
        async with openssl_process(*args) as client:
            report = await s_client_echo_session(client)
    assert_s_client_report(report, version)
    [peer] = handler.peers
    assert peer.subject == CLIENT_SUBJECT
    assert peer.protocol == f"TLSv{version}"


@pytest.mark.parametrize(
    ("version", "client_error"),
    [
        # TLS 1.2: the server aborts its handshake on the empty Certificate.
        ("1.2", "alert handshake failure"),
        # TLS 1.3: s_client thinks it is done; the refusal arrives afterwards.
        ("1.3", "alert certificate required"),
    ],
)
async def test_s_client_without_certificate_is_refused(
    pki: PKIFiles, version: str, client_error: str
) -> None:
    handler = RecordingEcho()
    async with running_tls_server(pki.mtls_server_settings(), handler) as server:
        port = port_of(server)
        flag = VERSION_FLAG[version]
        async with openssl_process(*s_client_args(port, pki, flag)) as client:
            # stdin stays open: s_client may only exit because of the server.
            status = await client.wait_exit()
            assert status != 0, client.transcript()
            assert client_error in client.err, client.transcript()
        await server_tasks_settled()
        assert server.stats.handshakes_failed == {"peer did not return a certificate": 1}
        assert server.stats.handshakes_ok == 0
        # The server is still up for a client that does present a certificate.
        args = s_client_args(port, pki, flag, *client_cert_args(pki))
        async with openssl_process(*args) as client:
            await s_client_echo_session(client)
    assert [p.subject for p in handler.peers] == [CLIENT_SUBJECT]
    assert server.stats.handshakes_ok == 1


# -- 2. Python's ssl module against serve_tls ----------------------------------

_STDLIB_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def stdlib_context(
    pki: PKIFiles, version: str | None = None, *, with_cert: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    if version is not None:
        context.minimum_version = context.maximum_version = _STDLIB_VERSIONS[version]
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def stdlib_echo(
    context: ssl.SSLContext, port: int, payload: bytes
) -> tuple[str | None, dict[str, Any]]:
    """Blocking: connect, echo *payload*, close gracefully; (version, peer cert)."""
    with socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT) as raw:
        tls = context.wrap_socket(raw, server_hostname="localhost")
        version, cert = tls.version(), tls.getpeercert()
        assert cert is not None
        tls.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = tls.recv(len(payload) - len(echoed))
            assert chunk, f"connection ended after {echoed!r}"
            echoed += chunk
        assert echoed == payload
        # Our close_notify, then the server's in reply (it ends the handler).
        tls.unwrap()
    return version, cert


def assert_stdlib_saw_our_server(cert: dict[str, Any]) -> None:
    assert (("commonName", "localhost"),) in cert["subject"]
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_stdlib_ssl_echo(pki: PKIFiles, version: str) -> None:
    handler = RecordingEcho()
    async with running_tls_server(pki.server_settings(), handler) as server:
        context = stdlib_context(pki, version)
        payload = unique_line() * 100
        got_version, cert = await trio.to_thread.run_sync(
            stdlib_echo, context, port_of(server), payload
        )
    assert got_version == f"TLSv{version}"
    assert_stdlib_saw_our_server(cert)
    [peer] = handler.peers
    assert peer.protocol == f"TLSv{version}"
    assert peer.server_name == "localhost"


async def test_stdlib_ssl_mutual_tls(pki: PKIFiles) -> None:
    handler = RecordingEcho()
    async with running_tls_server(pki.mtls_server_settings(), handler) as server:
        context = stdlib_context(pki, with_cert=True)
        got_version, cert = await trio.to_thread.run_sync(
            stdlib_echo, context, port_of(server), unique_line()
        )
    assert got_version == "TLSv1.3"
    assert_stdlib_saw_our_server(cert)
    [peer] = handler.peers
    assert peer.subject == CLIENT_SUBJECT


# -- 3. open_tls_stream against openssl s_server -------------------------------


async def reversed_echo_and_close(stream: TLSStream, server: OpenSSLProcess) -> None:
    line = unique_line()
    await stream.send_all(line)
    assert await receive_exactly(stream, len(line)) == line[-2::-1] + b"\n"
    await stream.send_all(b"CLOSE\n")
    with trio.fail_after(STEP_TIMEOUT):
        assert await stream.receive_some() == b"", "expected s_server's close_notify"
    await stream.aclose()
    assert await server.wait_exit() == 0, server.transcript()


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_against_s_server(pki: PKIFiles, version: str) -> None:
    async with s_server(pki, VERSION_FLAG[version]) as (server, port):
        # Our client allows 1.2-1.3: it must settle on whatever s_server speaks.
        stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
        assert stream.info.protocol == f"TLSv{version}"
        assert stream.info.certificate is not None
        assert stream.info.certificate.subject.rfc4514_string().startswith("CN=localhost")
        await reversed_echo_and_close(stream, server)
    assert f"Protocol version: TLSv{version}" in server.err, server.transcript()
    assert "No peer certificate" in server.err


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_mutual_tls_against_s_server(pki: PKIFiles, version: str) -> None:
    verify = ["-Verify", "1", "-CAfile", str(pki.ca), "-verify_return_error"]
    async with s_server(pki, VERSION_FLAG[version], *verify) as (server, port):
        settings = pki.client_settings(with_cert=True)
        stream = await open_tls_stream("127.0.0.1", port, settings=settings)
        assert stream.info.protocol == f"TLSv{version}"
        await reversed_echo_and_close(stream, server)
    assert f"Protocol version: TLSv{version}" in server.err, server.transcript()
    assert "Peer certificate: O = trio-tlsd development, CN = trio-tlsd client" in server.err


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_without_certificate_refused_by_s_server(pki: PKIFiles, version: str) -> None:
    verify = ["-Verify", "1", "-CAfile", str(pki.ca), "-verify_return_error"]
    async with s_server(pki, VERSION_FLAG[version], *verify) as (server, port):
        # TLS 1.3: our handshake completes before s_server has judged the
        # (missing) certificate; the refusal arrives as an alert on receive.
        with pytest.raises((HandshakeError, trio.BrokenResourceError)) as info:
            stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
            await stream.send_all(b"hello\n")
            await stream.receive_some()
        expected = "certificate required" if version == "1.3" else "handshake failure"
        assert expected in str(info.value)
        await server.wait_until(
            lambda: b"peer did not return a certificate" in server.stderr, "s_server's verdict"
        )


# -- 4. what the server must refuse ------------------------------------------------


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
async def test_old_protocol_versions_refused(pki: PKIFiles, flag: str) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        # SECLEVEL=0, or OpenSSL 3.0 will not even offer TLS 1.0/1.1.
        args = s_client_args(port_of(server), pki, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
        async with openssl_process(*args) as client:
            assert await client.wait_exit() != 0, client.transcript()
            assert "alert protocol version" in client.err, client.transcript()
            assert "Cipher is (NONE)" in client.out
        await server_tasks_settled()
    assert server.stats.handshakes_failed == {"unsupported protocol": 1}
    assert server.stats.handshakes_ok == 0


@pytest.mark.parametrize(
    ("pki_name", "ciphers"),
    [
        ("pki", "ECDHE-ECDSA-NULL-SHA"),
        # RSA key exchange and ECDHE-RSA would both be possible with this
        # certificate, so only the cipher policy can refuse them.
        ("rsa_pki", "NULL-SHA256:NULL-SHA:ECDHE-RSA-NULL-SHA"),
    ],
)
async def test_null_cipher_suites_refused(
    request: pytest.FixtureRequest, pki_name: str, ciphers: str
) -> None:
    files: PKIFiles = request.getfixturevalue(pki_name)
    async with running_tls_server(files.server_settings()) as server:
        args = s_client_args(port_of(server), files, "-tls1_2", "-cipher", f"{ciphers}:@SECLEVEL=0")
        async with openssl_process(*args) as client:
            assert await client.wait_exit() != 0, client.transcript()
            assert "alert handshake failure" in client.err, client.transcript()
            assert "Cipher is (NONE)" in client.out
        await server_tasks_settled()
    assert server.stats.handshakes_failed == {"no shared cipher": 1}


# The system openssl (Debian/Ubuntu 3.0, built without weak SSL ciphers)
# rejects every 3DES and RC4 suite ("no cipher match", even with -provider
# legacy and @SECLEVEL=0), and so does Python's ssl. So these suites are
# offered in a hand-made TLS 1.2 ClientHello instead; a control test proves
# the same ClientHello gets a ServerHello when it offers a good suite.
_AEAD_SUITES = [0xC02B, 0xC02F]  # ECDHE-ECDSA/RSA-AES128-GCM-SHA256
_WEAK_SUITES = {
    "3DES": [0x000A, 0x0016, 0xC008, 0xC012],  # RSA, DHE-RSA, ECDHE-ECDSA, ECDHE-RSA
    "RC4": [0x0004, 0x0005, 0xC007, 0xC011],  # RSA-MD5, RSA-SHA, ECDHE-ECDSA, ECDHE-RSA
}
_COMPRESSION_DEFLATE, _COMPRESSION_NULL = 1, 0
_ALERT_FATAL, _ALERT_HANDSHAKE_FAILURE = 2, 40


def _u16_list(values: Sequence[int]) -> bytes:
    return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def tls12_client_hello(suites: Sequence[int], compression: Sequence[int] = (0,)) -> bytes:
    extensions = (
        _extension(0x000A, _u16_list([0x001D, 0x0017]))  # groups: x25519, secp256r1
        + _extension(0x000B, b"\x01\x00")  # EC point formats: uncompressed
        + _extension(0x000D, _u16_list([0x0403, 0x0804, 0x0401]))  # ECDSA, PSS, PKCS#1
    )
    body = (
        b"\x03\x03"  # TLS 1.2
        + os.urandom(32)
        + b"\x00"  # no session id
        + _u16_list(suites)
        + bytes([len(compression), *compression])
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


async def first_record(port: int, client_hello: bytes) -> tuple[int, bytes]:
    """Send *client_hello*; return the type and body of the server's first record."""
    with trio.fail_after(STEP_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(client_hello)
            header = await receive_exactly(stream, 5)
            kind, _version, length = struct.unpack("!BHH", header)
            return kind, await receive_exactly(stream, length)


def parse_server_hello(body: bytes) -> tuple[int, int]:
    """(cipher suite, compression method) from a ServerHello handshake message."""
    assert body[0] == 2, f"not a ServerHello: {body[:4].hex()}"
    session_id_length = body[38]
    offset = 39 + session_id_length
    suite, compression = struct.unpack_from("!HB", body, offset)
    return suite, compression


@pytest.mark.parametrize("pki_name", ["pki", "rsa_pki"])
async def test_hand_made_client_hello_is_accepted_without_compression(
    request: pytest.FixtureRequest, pki_name: str
) -> None:
    files: PKIFiles = request.getfixturevalue(pki_name)
    async with running_tls_server(files.server_settings()) as server:
        # DEFLATE first: the server must still choose no compression (CRIME).
        hello = tls12_client_hello(_AEAD_SUITES, [_COMPRESSION_DEFLATE, _COMPRESSION_NULL])
        kind, body = await first_record(port_of(server), hello)
    assert kind == 22, f"expected a handshake record, got type {kind}: {body.hex()}"
    suite, compression = parse_server_hello(body)
    assert suite == (0xC02B if pki_name == "pki" else 0xC02F)
    assert compression == _COMPRESSION_NULL


@pytest.mark.parametrize("family", sorted(_WEAK_SUITES))
@pytest.mark.parametrize("pki_name", ["pki", "rsa_pki"])
async def test_3des_and_rc4_suites_refused(
    request: pytest.FixtureRequest, pki_name: str, family: str
) -> None:
    files: PKIFiles = request.getfixturevalue(pki_name)
    async with running_tls_server(files.server_settings()) as server:
        hello = tls12_client_hello(_WEAK_SUITES[family])
        kind, body = await first_record(port_of(server), hello)
        assert (kind, body) == (21, bytes([_ALERT_FATAL, _ALERT_HANDSHAKE_FAILURE]))
        await server_tasks_settled()
    assert server.stats.handshakes_failed == {"no shared cipher": 1}


async def test_renegotiation_refused(pki: PKIFiles) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        # -msg traces the handshake messages and alerts that s_client sees.
        args = s_client_args(port_of(server), pki, "-tls1_2", "-msg")
        async with openssl_process(*args) as client:
            await client.send(line := unique_line())
            await client.wait_for(line)
            await client.send(b"R\n")  # s_client: SSL_renegotiate, then a new ClientHello
            await client.wait_for(b"RENEGOTIATING", stderr=True)
            # Data sent after the attempt is echoed only if a second handshake succeeded.
            after = unique_line()
            with contextlib.suppress(trio.BrokenResourceError):
                await client.send(after)  # (s_client may have exited already: refused)
            refused_in_time = await client.poll(
                lambda: client.exited or after in client.stdout, REFUSAL_TIMEOUT
            )
            assert after not in client.stdout, "it renegotiated:\n" + client.transcript()
            status = await client.wait_exit() if refused_in_time else None
    if not refused_in_time:
        # Raised here, outside the nurseries, so that the transcript is not
        # wrapped in an ExceptionGroup.
        raise OpenSSLTimeout(
            f"s_client neither failed nor renegotiated within {REFUSAL_TIMEOUT:g}s\n"
            + client.transcript()
        )
    assert status != 0, client.transcript()
    trace = client.out
    # One ServerHello: the first handshake's. The second ClientHello got an alert.
    assert len(re.findall(r"^>>> .*, ClientHello$", trace, re.M)) == 2, trace
    assert len(re.findall(r"^<<< .*, ServerHello$", trace, re.M)) == 1, trace
    assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in trace, trace
    assert "no renegotiation" in client.err, client.transcript()
    assert server.stats.handshakes_ok == 1
