"""Forwarding: TLS terminated to a TCP backend, DTLS terminated to a UDP backend."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import (
    _read_until_exit,
    assert_one_line_error,
    bound_port,
    run_cli,
    serving,
    serving_without_stop,
)
from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from trio_tls_dtls import forward_tcp, forward_udp, open_dtls_channel, open_tls_stream
from trio_tls_dtls.cli.config_file import load_config_file
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.service import forward as forward_module

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"


def unused_port(kind: int) -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def tcp_backend(*, hold_open: bool = False) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP backend that answers each chunk with b"<" + chunk + b">".

    On EOF from us it sends b"bye" and closes (a half-close test reads it).
    """
    received: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            received.append(data)
            await stream.send_all(b"<" + data + b">")
        await stream.send_all(b"bye")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOCAL))
        try:
            yield listener.socket.getsockname()[1], received
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def udp_backend() -> AsyncIterator[tuple[int, list[tuple[str, int]]]]:
    """A UDP backend that answers each datagram with b"udp:" + datagram; records senders."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOCAL, 0))
    senders: list[tuple[str, int]] = []

    async def serve() -> None:
        while True:
            data, address = await sock.recvfrom(65536)
            senders.append(address)
            await sock.sendto(b"udp:" + data, address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield sock.getsockname()[1], senders
        finally:
            nursery.cancel_scope.cancel()
            sock.close()


async def test_tls_forwarded_to_tcp_both_ways(pki: PKIFiles) -> None:
    async with tcp_backend() as (backend, received):
        handler = forward_tcp(LOCAL, backend)
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
            await stream.send_all(b"hello")
            reply = b""
            with trio.fail_after(5):
                while reply != b"<hello>":
                    reply += await stream.receive_some()
            await stream.aclose()
    assert received == [b"hello"]


async def test_one_mebibyte_each_way_arrives_intact(pki: PKIFiles) -> None:
    payload = os.urandom(1 << 20)
    got = bytearray()

    async def backend_handler(stream: trio.SocketStream) -> None:
        data = bytearray()
        while len(data) < len(payload):
            data += await stream.receive_some(65536)
        got.extend(data)
        await stream.send_all(bytes(data[::-1]))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, backend_handler, 0, host=LOCAL))
        handler = forward_tcp(LOCAL, listener.socket.getsockname()[1])
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
            with trio.fail_after(30):
                async with trio.open_nursery() as io:
                    io.start_soon(stream.send_all, payload)
                    back = bytearray()
                    while chunk := await stream.receive_some():
                        back += chunk
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert bytes(got) == payload
    assert bytes(back) == payload[::-1]  # ended by the backend's close -> our close_notify


async def test_half_close_passes_through_both_ways(pki: PKIFiles) -> None:
    async with (
        tcp_backend() as (backend, _),
        running_tls_server(pki.server_settings(), forward_tcp(LOCAL, backend)) as server,
    ):
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        await stream.send_all(b"last words")
        await stream.send_close_notify()  # the backend sees EOF ...
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():  # ... and still answers
                reply += chunk
        assert reply == b"<last words>bye"  # then its FIN became our close_notify
        await stream.aclose()


async def test_backend_answer_after_half_close_may_outlast_the_grace(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace after a half-close is for silence: a backend still sending is not cut."""
    monkeypatch.setattr(forward_module, "CLOSE_GRACE", 1.0)
    parts = [b"part%d;" % i for i in range(6)]

    async def slow_answer(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            pass
        for part in parts:  # 1.5 s in all, never silent for 1 s
            await trio.sleep(0.25)
            await stream.send_all(part)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, slow_answer, 0, host=LOCAL))
        handler = forward_tcp(LOCAL, listener.socket.getsockname()[1])
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
            await stream.send_all(b"request")
            await stream.send_close_notify()
            reply = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    reply += chunk
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert reply == b"".join(parts)


async def test_silent_backend_after_half_close_is_cut(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward_module, "CLOSE_GRACE", 0.5)
    saw_eof = trio.Event()

    async def never_answers(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            pass
        saw_eof.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, never_answers, 0, host=LOCAL))
        handler = forward_tcp(LOCAL, listener.socket.getsockname()[1])
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
            await stream.send_close_notify()
            with trio.fail_after(5):
                assert await stream.receive_some() == b""  # cut after the grace
            await stream.aclose()
            assert saw_eof.is_set()
            assert server.stats.handler_errors == 0
        nursery.cancel_scope.cancel()


async def test_backend_name_that_does_not_resolve_ends_the_client(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    unresolvable = "no-such-backend.invalid"
    # A resolver that knows no such name, so no lookup leaves the machine.
    previous = trio.socket.set_custom_hostname_resolver(_NoSuchName(unresolvable))
    try:
        await _backend_name_unresolved(pki, unresolvable)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert f"-> {unresolvable}:80: backend unreachable (Name or service not known)" in caplog.text
    assert f"-> {unresolvable}:53: UDP backend unreachable (Name or service not known)" in (
        caplog.text
    )


class _NoSuchName(trio.abc.HostnameResolver):
    def __init__(self, name: str) -> None:
        self.name = name

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, *args: int):  # type: ignore[no-untyped-def]
        if host == self.name.encode("idna"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, *args)

    async def getnameinfo(self, sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


async def _backend_name_unresolved(pki: PKIFiles, unresolvable: str) -> None:
    async with (
        running_tls_server(pki.server_settings(), forward_tcp(unresolvable, 80)) as tls,
        running_dtls_server(pki.server_settings(), forward_udp(unresolvable, 53)) as dtls,
    ):
        stream = await open_tls_stream(LOCAL, port_of(tls), settings=pki.client_settings())
        channel = await open_dtls_channel(LOCAL, port_of(dtls), settings=pki.client_settings())
        with trio.fail_after(10):
            assert await stream.receive_some() == b""
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
        await stream.aclose()
        await channel.aclose()
        assert tls.stats.handler_errors == dtls.stats.handler_errors == 0


def test_bad_backend_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="port must be 1-65535, not 0"):
        forward_tcp(LOCAL, 0)
    with pytest.raises(ValueError, match="port must be 1-65535, not 70000"):
        forward_udp(LOCAL, 70000)
    with pytest.raises(ValueError, match="host must be a non-empty string"):
        forward_udp("", 53)
    with pytest.raises(ValueError, match="connect_timeout must be a positive number"):
        forward_tcp(LOCAL, 80, connect_timeout=0)


async def test_tcp_backend_down_closes_the_client_cleanly(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    handler = forward_tcp(LOCAL, unused_port(socket.SOCK_STREAM))
    async with running_tls_server(pki.server_settings(), handler) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        with trio.fail_after(5):
            assert await stream.receive_some() == b""  # close_notify, not a hang
        await stream.aclose()
        assert server.stats.handler_errors == 0
    assert "backend unreachable (Connection refused)" in caplog.text


async def test_tcp_backend_that_never_answers_the_connect_times_out(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = unused_port(socket.SOCK_STREAM)
    real_open = trio.open_tcp_stream

    async def blackholed(host: str, port: int, **kwargs: object) -> trio.SocketStream:
        if port == backend:  # a SYN that is never answered
            await trio.sleep_forever()
        return await real_open(host, port, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trio, "open_tcp_stream", blackholed)
    handler = forward_tcp(LOCAL, backend, connect_timeout=0.2)
    async with running_tls_server(pki.server_settings(), handler) as server:
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        with trio.fail_after(5):
            assert await stream.receive_some() == b""
        await stream.aclose()
        assert server.stats.handler_errors == 0
    assert "backend unreachable (timed out)" in caplog.text


async def test_tcp_backend_reset_ends_the_client_connection(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    async def resetting(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        # SO_LINGER 0: close with a RST, not a FIN.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    caplog.set_level(logging.INFO, logger="trio_tls_dtls.service.forward")
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, resetting, 0, host=LOCAL))
        handler = forward_tcp(LOCAL, listener.socket.getsockname()[1])
        async with running_tls_server(pki.server_settings(), handler) as server:
            stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
            await stream.send_all(b"hello")
            with trio.fail_after(5):
                try:
                    while await stream.receive_some():
                        pass
                except trio.BrokenResourceError:
                    pass  # the end may come as a reset too; either way it comes
            await stream.aclose()
            assert server.stats.handler_errors == 0
        nursery.cancel_scope.cancel()
    assert "ended abruptly" in caplog.text


async def test_backend_datagram_too_large_for_a_record_is_dropped(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOCAL, 0))

    async def backend() -> None:
        while True:
            data, address = await sock.recvfrom(65536)
            await sock.sendto(b"x" * 8000, address)  # more than any DTLS MTU carries
            await sock.sendto(b"fits:" + data, address)

    caplog.set_level(logging.DEBUG, logger="trio_tls_dtls.service.forward")
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend)
            handler = forward_udp(LOCAL, sock.getsockname()[1])
            async with running_dtls_server(pki.server_settings(), handler) as server:
                channel = await open_dtls_channel(
                    LOCAL, port_of(server), settings=pki.client_settings()
                )
                with trio.fail_after(5):
                    for i in range(2):  # the association survives the drop
                        await channel.send(b"q%d" % i)
                        assert await channel.receive() == b"fits:q%d" % i
                await channel.aclose()
                assert server.stats.handler_errors == 0
            nursery.cancel_scope.cancel()
    assert "dropped a 8000-byte backend datagram" in caplog.text


async def test_dtls_peers_forwarded_each_from_its_own_port(pki: PKIFiles) -> None:
    async with udp_backend() as (backend, senders):
        handler = forward_udp(LOCAL, backend)
        async with running_dtls_server(pki.server_settings(), handler) as server:
            settings = pki.client_settings()
            channels = [
                await open_dtls_channel(LOCAL, port_of(server), settings=settings) for _ in range(2)
            ]
            with trio.fail_after(5):
                for n, channel in enumerate(channels):
                    for i in range(3):
                        await channel.send(b"peer %d msg %d" % (n, i))
                        assert await channel.receive() == b"udp:peer %d msg %d" % (n, i)
            for channel in channels:
                await channel.aclose()
    assert len(senders) == 6
    assert len(set(senders)) == 2  # one backend socket per peer, kept for its lifetime


async def test_udp_backend_down_closes_the_peer_cleanly(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    handler = forward_udp(LOCAL, unused_port(socket.SOCK_DGRAM))
    async with running_dtls_server(pki.server_settings(), handler) as server:
        channel = await open_dtls_channel(LOCAL, port_of(server), settings=pki.client_settings())
        await channel.send(b"anyone there?")
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await channel.receive()  # the server's close_notify
        await channel.aclose()
        assert server.stats.handler_errors == 0
    assert "UDP backend unreachable (Connection refused)" in caplog.text


async def test_cli_serve_forwards(pki: PKIFiles, tmp_path: Path) -> None:
    async with tcp_backend() as (tcp_port, _), udp_backend() as (udp_port, _):
        flags = [
            "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            "--forward-tcp", f"{LOCAL}:{tcp_port}", "--forward-udp", f"{LOCAL}:{udp_port}",
        ]  # fmt: skip
        async with serving(tmp_path, *flags) as (_, banner):
            assert f"TLS forwarded to {LOCAL}:{tcp_port}" in banner
            assert f"DTLS forwarded to {LOCAL}:{udp_port}" in banner
            port = int(banner.split("on tcp 127.0.0.1:")[1].split()[0].rstrip(";"))
            settings = pki.client_settings()
            stream = await open_tls_stream(LOCAL, port, settings=settings)
            await stream.send_all(b"via cli")
            with trio.fail_after(5):
                assert await stream.receive_some() == b"<via cli>"
            await stream.aclose()
            channel = await open_dtls_channel(LOCAL, port, settings=settings)
            await channel.send(b"dgram")
            with trio.fail_after(5):
                assert await channel.receive() == b"udp:dgram"
            await channel.aclose()


def test_forward_flag_and_config_errors(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", "--forward-tcp", "nocolon"), "--forward-tcp")
    assert_one_line_error(run_cli("serve", "--forward-udp", "::1:53"), "--forward-udp", "brackets")
    config = tmp_path / "bad.toml"
    config.write_text('forward_tcp = "backend"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: key 'forward_tcp'"):
        load_config_file(config)
    config.write_text('forward_udp = "[::1]:5353"\n')
    assert load_config_file(config) == {"forward_udp": "[::1]:5353"}


async def test_config_file_forwarding_and_a_drain_with_a_forwarded_connection_open(
    pki: PKIFiles, tmp_path: Path
) -> None:
    async with tcp_backend() as (tcp_port, received):
        config = tmp_path / "forward.toml"
        config.write_text(
            f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\n'
            f'forward_tcp = "{LOCAL}:{tcp_port}"\n'
        )
        async with serving_without_stop("--config", str(config), cwd=tmp_path) as (
            process,
            banner,
        ):
            assert f"TLS forwarded to {LOCAL}:{tcp_port}, DTLS echo" in banner
            port = bound_port(banner, "tcp")
            stream = await open_tls_stream(LOCAL, port, settings=pki.client_settings())
            await stream.send_all(b"ping")
            with trio.fail_after(5):
                assert await stream.receive_some() == b"<ping>"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await stream.receive_some() == b""  # the drain's close_notify
            await stream.aclose()  # our close_notify: the backend sees EOF, the handler ends
            rest = await _read_until_exit(process)
    assert process.returncode == 0, rest
    assert "0 still open when stopped" in rest, rest
    assert "handler failed" not in rest, rest
    assert received == [b"ping"]


def test_check_config_shows_the_forward_keys(tmp_path: Path) -> None:
    config = tmp_path / "forward.toml"
    config.write_text('forward_tcp = "backend.example:8080"\nforward_udp = "[::1]:5353"\n')
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert 'forward_tcp = "backend.example:8080"' in result.stdout
    assert 'forward_udp = "[::1]:5353"' in result.stdout
    config.write_text("port = 4433\n")
    result = run_cli("check-config", str(config))
    assert "# forward_tcp is not set" in result.stdout
    assert "# forward_udp is not set" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('forward_tcp = "backend"', "expected HOST:PORT"),
        ('forward_tcp = "backend:0"', "port must be 1-65535, not 0"),
        ('forward_tcp = "backend:http"', "port must be an integer"),
        ("forward_tcp = 8080", "expected a non-empty string, got 8080"),
        ('forward_udp = "::1:53"', "IPv6 addresses need brackets"),
        ('forward_udp = "[::1:53"', "unclosed '['"),
        ('forward_udp = "[nope]:53"', "is not an IPv6 address"),
    ],
)
def test_bad_forward_values_in_a_config_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    key = text.split(" =")[0]
    with pytest.raises(ConfigError) as info:
        load_config_file(config)
    assert f"{config}: key {key!r}: " in str(info.value)
    assert message in str(info.value)


def test_bad_forward_flags() -> None:
    result = run_cli("serve", "--forward-tcp", "backend:99999")
    assert_one_line_error(result, "--forward-tcp", "1-65535")
    assert_one_line_error(run_cli("serve", "--forward-udp", "[::1"), "--forward-udp")
