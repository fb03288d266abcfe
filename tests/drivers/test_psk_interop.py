"""Pre-shared keys on the wire, against real peers: openssl, gnutls-cli and our own client.

1. ``openssl s_client -psk_identity ID -psk HEX`` (TLS 1.2, TLS 1.3, DTLS 1.2)
   against ``serve_tls``/``serve_dtls`` with a PSK table and no certificate:
   the line comes back, the handler sees the identity, the access log line
   ends with it; a wrong key is refused with a reason naming the identity.
2. ``gnutls-cli --pskusername ID --pskkey HEX`` (TLS 1.3 over TCP, DTLS 1.2
   with ``--udp``) against the same servers. gnutls-cli 3.7 (Debian 12)
   crashes in its own session printer after a (D)TLS 1.2 PSK handshake
   (it calls ``gnutls_psk_server_get_username`` on a client session), so
   the DTLS test checks the handshake our server completed, and echoes a
   line only if gnutls-cli is still alive to send one.
3. ``open_tls_stream``/``open_dtls_channel`` with ``ClientSettings(psk_identity=,
   psk_key=)`` against ``openssl s_server -nocert -psk HEX``, and against our
   own servers.

openssl runs on the system's OpenSSL 3.0, gnutls-cli on GnuTLS, we on the
OpenSSL inside the ``cryptography`` wheel. Processes are killed by PID on
the way out (:mod:`tests.openssl`); every wait has a deadline.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from subprocess import PIPE

import pytest
import trio

from tests.helpers import port_of, receive_exactly, running_dtls_server, running_tls_server
from tests.openssl import (
    KILL_TIMEOUT,
    OPENSSL_MARKS,
    STEP_TIMEOUT,
    OpenSSLProcess,
    RecordingEcho,
    openssl_process,
    s_client_echo_session,
    server_tasks_settled,
    unique_line,
)
from trio_tls_dtls import (
    ClientSettings,
    HandshakeError,
    ServerSettings,
    dtls_echo_handler,
    open_dtls_channel,
    open_tls_stream,
)

pytestmark = [*OPENSSL_MARKS, pytest.mark.timeout(30)]

GNUTLS_CLI = shutil.which("gnutls-cli")
needs_gnutls = pytest.mark.skipif(
    GNUTLS_CLI is None, reason="needs gnutls-cli on PATH (apt-get install gnutls-bin)"
)

IDENTITY = "sensor-1"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
WRONG_KEY = bytes.fromhex("00112233445566778899aabbccddee00")
# gnutls-cli offers PSK key exchanges only when its priority string says so.
GNUTLS_PSK_PRIORITY = "NORMAL:+ECDHE-PSK:+PSK"

FLAGS = {"tls1.2": "-tls1_2", "tls1.3": "-tls1_3", "dtls1.2": "-dtls1_2"}
PROTOCOLS = {"tls1.2": "TLSv1.2", "tls1.3": "TLSv1.3", "dtls1.2": "DTLSv1.2"}


def psk_server_settings(**options: object) -> ServerSettings:
    """A PSK-only server (no certificate): what a CoAP/LwM2M gateway runs."""
    return ServerSettings(psk_keys={IDENTITY: KEY}, **options)  # type: ignore[arg-type]


def psk_client_settings(key: bytes = KEY, **options: object) -> ClientSettings:
    return ClientSettings(
        psk_identity=IDENTITY, psk_key=key, handshake_timeout=STEP_TIMEOUT, **options
    )  # type: ignore[arg-type]


@asynccontextmanager
async def running_psk_server(transport: str, handler: RecordingEcho) -> AsyncIterator[int]:
    """Our TLS or DTLS server with the PSK table; yields its port."""
    if transport.startswith("dtls"):
        async with running_dtls_server(psk_server_settings(), handler) as server:
            yield port_of(server)
    else:
        async with running_tls_server(psk_server_settings(), handler) as server:
            yield port_of(server)


def s_client_psk_args(port: int, transport: str, key: bytes = KEY) -> list[str]:
    return [
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        FLAGS[transport],
        "-psk_identity",
        IDENTITY,
        "-psk",
        key.hex(),
        "-no_ign_eof",
    ]


# -- 1. openssl s_client against our servers ------------------------------------------


@pytest.mark.parametrize("transport", ["tls1.2", "tls1.3", "dtls1.2"])
async def test_s_client_psk_echo(transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.access")
    dtls = transport.startswith("dtls")
    handler = RecordingEcho(dtls_echo_handler) if dtls else RecordingEcho()
    async with running_psk_server(transport, handler) as port:
        async with openssl_process(*s_client_psk_args(port, transport)) as client:
            report = await s_client_echo_session(client)
        await server_tasks_settled()
    assert re.search(rf"Protocol\s*: {PROTOCOLS[transport]}", report), report
    [peer] = handler.peers
    assert peer.psk_identity == IDENTITY
    assert peer.certificate is None and not peer.resumed
    assert peer.protocol == PROTOCOLS[transport]
    [line] = [r.getMessage() for r in caplog.records if r.name == "trio_tls_dtls.access"]
    assert line.endswith(f"reason=peer_closed psk_identity={IDENTITY}"), line


@pytest.mark.parametrize(
    ("transport", "s_client_error"),
    [("tls1.2", "alert bad record mac"), ("tls1.3", "alert decrypt error")],
)
async def test_s_client_wrong_key_is_refused(transport: str, s_client_error: str) -> None:
    handler = RecordingEcho()
    async with running_tls_server(psk_server_settings(), handler) as server:
        args = s_client_psk_args(port_of(server), transport, WRONG_KEY)
        async with openssl_process(*args) as client:
            assert await client.wait_exit() != 0, client.transcript()
            assert s_client_error in client.err, client.transcript()
        await server_tasks_settled()
        [(reason, count)] = server.stats.handshakes_failed.items()
    assert count == 1 and not handler.peers
    assert reason.startswith(f"wrong PSK for identity '{IDENTITY}' ("), reason


# -- 2. gnutls-cli against our servers -----------------------------------------------------


@asynccontextmanager
async def gnutls_cli(*args: str) -> AsyncIterator[OpenSSLProcess]:
    """Run ``gnutls-cli *args``; on exit, kill it by its PID and reap it."""
    assert GNUTLS_CLI is not None
    process = await trio.lowlevel.open_process(
        [GNUTLS_CLI, *args], stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    handle = OpenSSLProcess(process, ("gnutls-cli", *args))
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(handle._collect, process.stdout, handle.stdout)
            nursery.start_soon(handle._collect, process.stderr, handle.stderr)
            try:
                yield handle
            finally:
                process.kill()
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_TIMEOUT):
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
            await process.wait()


def gnutls_psk_args(port: int, *extra: str) -> list[str]:
    return [
        "--pskusername",
        IDENTITY,
        "--pskkey",
        KEY.hex(),
        "--priority",
        GNUTLS_PSK_PRIORITY,
        "-p",
        str(port),
        *extra,
        "127.0.0.1",
    ]


@needs_gnutls
async def test_gnutls_cli_tls13_psk_echo() -> None:
    handler = RecordingEcho()
    async with (
        running_psk_server("tls1.3", handler) as port,
        gnutls_cli(*gnutls_psk_args(port)) as client,
    ):
        await client.wait_for(b"Handshake was completed")
        line = unique_line()
        await client.send(line)
        await client.wait_for(line)
        await client.close_stdin()
        assert await client.wait_exit() == 0, client.transcript()
    assert f"PSK authentication. Connected as '{IDENTITY}'" in client.out, client.transcript()
    [peer] = handler.peers
    assert (peer.protocol, peer.psk_identity) == ("TLSv1.3", IDENTITY)


@needs_gnutls
async def test_gnutls_cli_dtls12_psk_handshake() -> None:
    handler = RecordingEcho(dtls_echo_handler)
    async with (
        running_psk_server("dtls1.2", handler) as port,
        gnutls_cli(*gnutls_psk_args(port, "--udp")) as client,
    ):
        with trio.fail_after(STEP_TIMEOUT):
            while not handler.peers:
                await trio.sleep(0.01)
        [peer] = handler.peers
        assert (peer.protocol, peer.psk_identity) == ("DTLSv1.2", IDENTITY)
        assert "PSK" in peer.cipher
        # gnutls-cli 3.7 may crash printing the session (see the module
        # docstring); if it survives, the data path must work too.
        if await client.poll(lambda: client.exited, 0.5):
            assert await client.wait_exit() != 0, client.transcript()
        else:
            line = unique_line()
            await client.send(line)
            await client.wait_for(line)


# -- 3. our client ----------------------------------------------------------------------------


_ACCEPT_LINE = re.compile(rb"^ACCEPT 127\.0\.0\.1:(\d+)$", re.MULTILINE)


@asynccontextmanager
async def s_server_psk(transport: str) -> AsyncIterator[tuple[OpenSSLProcess, int]]:
    """``s_server -nocert -psk`` for one session: prints what it gets, sends its stdin."""
    args = ["s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-nocert"]
    args += ["-psk", KEY.hex(), "-psk_identity", IDENTITY]
    if transport == "dtls1.2":
        args.append("-dtls1_2")
    async with openssl_process(*args) as server:
        await server.wait_until(lambda: _ACCEPT_LINE.search(server.stdout) is not None, "ACCEPT")
        match = _ACCEPT_LINE.search(server.stdout)
        assert match is not None
        yield server, int(match.group(1))


@pytest.mark.parametrize("transport", ["tls1.2", "tls1.3", "dtls1.2"])
async def test_our_client_against_s_server_psk(transport: str) -> None:
    version = "1.3" if transport == "tls1.3" else "1.2"
    settings = psk_client_settings(min_version=version, max_version=version)
    line, reply = unique_line(), unique_line()
    async with s_server_psk(transport) as (server, port):
        if transport == "dtls1.2":
            channel = await open_dtls_channel("127.0.0.1", port, settings=settings)
            info = channel.info
            await channel.send(line)
            await server.wait_for(line)
            await server.send(reply)
            with trio.fail_after(STEP_TIMEOUT):
                assert await channel.receive() == reply
            await channel.aclose()
        else:
            stream = await open_tls_stream("127.0.0.1", port, settings=settings)
            info = stream.info
            await stream.send_all(line)
            await server.wait_for(line)
            await server.send(reply)
            with trio.fail_after(STEP_TIMEOUT):
                assert await receive_exactly(stream, len(reply)) == reply
            await stream.aclose()
        assert await server.wait_exit() == 0, server.transcript()
    assert (info.protocol, info.psk_identity, info.certificate) == (
        PROTOCOLS[transport],
        IDENTITY,
        None,
    )


async def test_our_client_wrong_key_against_s_server() -> None:
    settings = psk_client_settings(WRONG_KEY, max_version="1.2")
    async with s_server_psk("tls1.2") as (server, port):
        with pytest.raises(HandshakeError) as info:
            await open_tls_stream("127.0.0.1", port, settings=settings)
        assert await server.wait_exit() == 0, server.transcript()
    assert info.value.reason == (
        f"server refused PSK identity '{IDENTITY}': unknown or wrong key (tls alert bad record mac)"
    )
    assert "decryption failed or bad record mac" in server.err, server.transcript()


@pytest.mark.parametrize("transport", ["tls1.2", "tls1.3", "dtls1.2"])
async def test_our_client_and_server(transport: str) -> None:
    version = "1.3" if transport == "tls1.3" else "1.2"
    settings = psk_client_settings(min_version=version, max_version=version)
    dtls = transport == "dtls1.2"
    handler = RecordingEcho(dtls_echo_handler) if dtls else RecordingEcho()
    line = unique_line()
    async with running_psk_server(transport, handler) as port:
        if dtls:
            channel = await open_dtls_channel("127.0.0.1", port, settings=settings)
            await channel.send(line)
            with trio.fail_after(STEP_TIMEOUT):
                assert await channel.receive() == line
            info = channel.info
            await channel.aclose()
        else:
            stream = await open_tls_stream("127.0.0.1", port, settings=settings)
            await stream.send_all(line)
            with trio.fail_after(STEP_TIMEOUT):
                assert await receive_exactly(stream, len(line)) == line
            info = stream.info
            await stream.aclose()
    [peer] = handler.peers
    assert info.psk_identity == peer.psk_identity == IDENTITY
    assert info.protocol == peer.protocol == PROTOCOLS[transport]
