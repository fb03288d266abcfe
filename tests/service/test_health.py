"""/healthz and /readyz: the HTTP answers, readiness through a stop, the drain delay, the CLI.

Every server here is real and on loopback; probes are plain HTTP/1.0 over
TCP. The drain-delay tests send real signals to this process, held by
:func:`serve_process` (as in ``test_signals.py``).
"""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import (
    _read_until_exit,
    assert_one_line_error,
    bound_port,
    run_cli,
    serving_without_stop,
)
from tests.conftest import PKIFiles
from tests.service.test_signals import serving_process, signal_self
from tests.service.test_workers import workers
from trio_tls_dtls import Service, open_dtls_channel, open_tls_stream, serve_health, serve_metrics
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.service.health import readiness
from trio_tls_dtls.service.http_endpoint import (
    Request,
    Response,
    parse_request,
    render,
    respond,
)

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"


async def http(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request; the status code, the headers (lower-case names) and the body."""
    stream = await trio.open_tcp_stream(LOCAL, port)
    await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    reply = b""
    with trio.fail_after(4):
        while chunk := await stream.receive_some():
            reply += chunk
    await stream.aclose()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, code, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.0"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers, body


# -- the HTTP layer, without sockets --------------------------------------------------


def test_parse_request_reads_method_path_query_and_headers() -> None:
    request = parse_request(b"HEAD /readyz?verbose=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z \r\n\r\n")
    assert request == Request("HEAD", "/readyz", "verbose=1", {"host": "a", "x-y": "z"})
    assert parse_request(b"") is None
    assert parse_request(b"GARBAGE\r\n\r\n") is None


def test_respond_routes_and_refuses() -> None:
    routes = {"/a": lambda request: Response(200, b"A")}
    assert respond(routes, Request("GET", "/a")).body == b"A"
    assert respond(routes, Request("HEAD", "/a")).body == b"A"  # render() drops it
    assert respond(routes, Request("GET", "/b")).status == 404
    refused = respond(routes, Request("DELETE", "/a"))
    assert refused.status == 405
    assert ("Allow", "GET, HEAD") in refused.headers
    assert respond(routes, None).status == 400


def test_head_renders_the_get_headers_without_the_body() -> None:
    response = Response(503, b"not ready: x\n")
    full, head = render(response), render(response, head_only=True)
    assert full == head + b"not ready: x\n"
    assert head.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert b"\r\nContent-Length: 13\r\n" in head
    assert head.endswith(b"\r\n\r\n")


# -- readiness of a Service ------------------------------------------------------------


async def test_readiness_follows_the_life_of_a_service(pki: PKIFiles) -> None:
    service = Service(pki.server_settings())
    assert readiness(service) == "not ready: listeners not bound"
    await service.bind(0, LOCAL)
    assert readiness(service) == "not ready: listeners not serving"
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert readiness(service) is None
        service.begin_stopping("stopping: test")
        service.begin_stopping("stopping: a later reason")  # the first one stays
        assert readiness(service) == "not ready: stopping: test"
        nursery.cancel_scope.cancel()
    assert not service.serving


async def test_a_drain_alone_makes_the_service_not_ready(pki: PKIFiles) -> None:
    service = Service(pki.server_settings(), dtls=False)
    await service.bind(0, LOCAL)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.drain()  # nothing open: returns at once
        assert readiness(service) == "not ready: draining"
        nursery.cancel_scope.cancel()


# -- over HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize("serve", [serve_health, serve_metrics])
async def test_health_endpoints_over_http(pki: PKIFiles, serve: object) -> None:
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings())
        port = await nursery.start(serve, service, 0)
        # Before the service is bound: alive, not ready.
        status, headers, body = await http(port, "GET", "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert headers["content-type"].startswith("text/plain")
        assert headers["cache-control"] == "no-store"
        status, _, body = await http(port, "GET", "/readyz")
        assert (status, body) == (503, b"not ready: listeners not bound\n")

        await service.bind(0, LOCAL)
        await nursery.start(service.run)
        status, headers, body = await http(port, "GET", "/readyz?verbose")
        assert (status, body) == (200, b"ready\n")
        assert headers["content-length"] == "6"
        # HEAD: the same status and headers, no body.
        for path, code, length in (("/healthz", 200, "3"), ("/readyz", 200, "6")):
            status, headers, body = await http(port, "HEAD", path)
            assert (status, headers["content-length"], body) == (code, length, b"")
        status, headers, body = await http(port, "POST", "/readyz")
        assert (status, headers["allow"]) == (405, "GET, HEAD")
        status, _, body = await http(port, "GET", "/nope")
        assert status == 404
        assert b"/healthz" in body and b"/readyz" in body
        assert (b"/metrics" in body) == (serve is serve_metrics)

        service.begin_stopping("stopping: SIGTERM received")
        status, headers, body = await http(port, "HEAD", "/readyz")
        assert (status, body) == (503, b"")
        assert int(headers["content-length"]) == len(b"not ready: stopping: SIGTERM received\n")
        status, _, body = await http(port, "GET", "/readyz")
        assert (status, body) == (503, b"not ready: stopping: SIGTERM received\n")
        assert (await http(port, "GET", "/healthz"))[0] == 200  # still alive while stopping
        nursery.cancel_scope.cancel()


async def test_metrics_answer_head_too(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings(), dtls=False)
        port = await nursery.start(serve_metrics, service, 0)
        status, get_headers, body = await http(port, "GET", "/metrics")
        assert status == 200 and b"trio_tlsd_tls_connections_total" in body
        status, headers, body = await http(port, "HEAD", "/metrics")
        assert (status, body) == (200, b"")
        assert headers["content-type"] == get_headers["content-type"]
        assert int(headers["content-length"]) > 0
        nursery.cancel_scope.cancel()


async def test_a_bad_request_is_answered_400(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_health, Service(pki.server_settings()), 0)
        stream = await trio.open_tcp_stream(LOCAL, port)
        await stream.send_all(b"\r\n\r\n")
        with trio.fail_after(4):
            reply = await stream.receive_some()
        assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n")
        await stream.aclose()
        nursery.cancel_scope.cancel()


# -- SIGTERM: not ready at once, accepting through the delay, then the drain -----------


async def test_readyz_fails_at_once_and_new_clients_are_served_during_the_delay(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(drain_delay=1.5, drain_timeout=10.0)
    async with serving_process(settings) as running, trio.open_nursery() as nursery:
        service = running.service
        health = await nursery.start(serve_health, service, 0)
        assert (await http(health, "GET", "/readyz"))[0] == 200
        client = pki.client_settings()
        before = await open_tls_stream(LOCAL, service.port, settings=client)
        await before.send_all(b"before")
        assert await before.receive_some() == b"before"

        signal_self(signal.SIGTERM)
        with trio.fail_after(1):  # well inside the 1.5 s delay
            while (await http(health, "GET", "/readyz"))[0] != 503:
                await trio.sleep(0.01)
        status, _, body = await http(health, "GET", "/readyz")
        assert (status, body) == (503, b"not ready: stopping: SIGTERM received\n")
        assert not before.peer_closed  # no close_notify yet: the drain has not started
        # The listeners still accept: a new TLS connection and a new DTLS peer.
        during = await open_tls_stream(LOCAL, service.port, settings=client)
        await during.send_all(b"during the delay")
        assert await during.receive_some() == b"during the delay"
        channel = await open_dtls_channel(LOCAL, service.port, settings=client)
        await channel.send(b"dtls during the delay")
        assert await channel.receive() == b"dtls during the delay"
        assert service.tls is not None and service.tls.stats.accepted == 2

        # Then the drain: everyone gets close_notify; once they close, exit 0.
        with trio.fail_after(10):
            assert await before.receive_some() == b""
            assert await during.receive_some() == b""
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
        for closing in (before, during, channel):
            await closing.aclose()
        assert await running.exit_status() == 0
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    delayed = messages.index(
        "SIGTERM received: not ready; accepting for 1.5s more, then draining (again to stop now)"
    )
    drained = next(i for i, m in enumerate(messages) if m.startswith("drain delay over: draining"))
    assert delayed < drained
    assert messages[drained] == "drain delay over: draining 3 open (up to 10s; again to stop now)"


async def test_a_second_signal_during_the_delay_stops_at_once(pki: PKIFiles) -> None:
    settings = pki.server_settings(drain_delay=60.0)
    async with serving_process(settings, dtls=False) as running:
        stream = await open_tls_stream(LOCAL, running.service.port, settings=pki.client_settings())
        signal_self(signal.SIGTERM)
        await trio.sleep(0.1)
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 1  # within 15 s, not after the 60 s delay
        await stream.aclose()


def test_drain_delay_setting_must_be_zero_or_more(pki: PKIFiles) -> None:
    assert pki.server_settings().drain_delay == 0.0
    assert pki.server_settings(drain_delay=0).drain_delay == 0.0
    for bad in (-1, float("inf"), float("nan"), "5", True):
        with pytest.raises(ConfigError, match="drain_delay"):
            pki.server_settings(drain_delay=bad)


# -- the command line ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


async def test_cli_serve_with_health_port_and_drain_delay(pki: PKIFiles) -> None:
    health = free_port()
    flags = [
        "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--tls-only",
        "--health-port", str(health), "--drain-delay", "1",
    ]  # fmt: skip
    async with serving_without_stop(*flags) as (process, banner):
        assert f"health at http://127.0.0.1:{health}/healthz and /readyz" in banner
        port = bound_port(banner, "tcp")
        for method in ("GET", "HEAD"):
            status, _, body = await http(health, method, "/healthz")
            assert (status, body) == (200, b"ok\n" if method == "GET" else b"")
        status, _, body = await http(health, "GET", "/readyz")
        assert (status, body) == (200, b"ready\n")
        assert (await http(health, "GET", "/metrics"))[0] == 404  # metrics are off

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(0.9):  # inside the 1 s delay
            while (status := (await http(health, "GET", "/readyz"))[0]) == 200:
                await trio.sleep(0.01)
        assert status == 503
        stream = await open_tls_stream(LOCAL, port, settings=pki.client_settings())
        await stream.send_all(b"still accepting")
        assert await stream.receive_some() == b"still accepting"
        with trio.fail_after(10):
            assert await stream.receive_some() == b""  # the drain's close_notify
        await stream.aclose()
        rest = await _read_until_exit(process)
        assert process.returncode == 0, rest
        assert "SIGTERM received: not ready; accepting for 1s more" in rest
        assert "drain delay over: draining 1 open" in rest
        assert "trio-tlsd: drained: TLS: 1 connections" in rest


async def test_cli_metrics_port_serves_health_too(pki: PKIFiles) -> None:
    metrics = free_port()
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), "--tls-only"]
    async with serving_without_stop(*flags, "--metrics-port", str(metrics)) as (process, banner):
        assert "/healthz and /readyz" in banner
        status, _, body = await http(metrics, "GET", "/readyz")
        assert (status, body) == (200, b"ready\n")
        assert (await http(metrics, "GET", "/healthz"))[0] == 200
        process.send_signal(signal.SIGTERM)
        rest = await _read_until_exit(process)
        assert process.returncode == 0, rest


def test_bad_health_and_drain_options(pki: PKIFiles, tmp_path: Path) -> None:
    files = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    assert_one_line_error(run_cli("serve", "--health-port", "0"), "--health-port", "1-65535")
    assert_one_line_error(run_cli("serve", "--drain-delay", "-1"), "--drain-delay", "0 or a")
    same = run_cli("serve", *files, "--metrics-port", "9100", "--health-port", "9100")
    assert_one_line_error(same, "--health-port 9100 overlaps --metrics-port 9100")
    # With workers, the health ports H..H+N-1 must not take the one metrics
    # port either, nor run past 65535.
    overlap = run_cli(
        "serve", *files, "--workers", "3", "--port", "4433",
        "--metrics-port", "9104", "--health-port", "9102",
    )  # fmt: skip
    assert_one_line_error(overlap, "--health-port 9102 overlaps --metrics-port 9104", "3 workers")
    past = run_cli("serve", *files, "--workers", "2", "--port", "4433", "--health-port", "65535")
    assert_one_line_error(past, "--health-port 65535", "P..P+1")
    config = tmp_path / "serve.toml"
    for line, key in (
        ("health_port = 0", "'health_port'"),
        ("health_host = 5", "'health_host'"),
        ('drain_delay = "1"', "'drain_delay'"),
    ):
        config.write_text(line + "\n")
        assert_one_line_error(run_cli("check-config", str(config)), str(config), key)
    config.write_text("drain_delay = 0\nhealth_port = 9101\n")
    result = run_cli("check-config", str(config), cwd=tmp_path)
    assert "drain_delay = 0.0" in result.stdout and "health_port = 9101" in result.stdout


def test_cli_parses_health_flags_into_options() -> None:
    args = build_parser().parse_args(
        ["serve", "--health-port", "8080", "--health-host", "0.0.0.0", "--drain-delay", "2.5"]
    )
    options = serve_options(args)
    assert (options["health_port"], options["health_host"]) == (8080, "0.0.0.0")
    assert options["drain_delay"] == 2.5
    defaults = serve_options(build_parser().parse_args(["serve"]))
    assert (defaults["health_port"], defaults["health_host"], defaults["drain_delay"]) == (
        None,
        "127.0.0.1",
        0.0,
    )


def two_free_ports() -> int:
    """P such that P and P + 1 are both free TCP ports on loopback right now."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as probe:
            try:
                probe.bind((LOCAL, first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two free ports in a row")


async def test_each_worker_serves_health_on_its_own_port(pki: PKIFiles) -> None:
    # Worker k on P + k, as metrics: both answer, both turn not ready on SIGTERM.
    health = two_free_ports()
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), "--tls-only"]
    flags += ["--health-port", str(health), "--drain-delay", "2"]
    async with workers(*flags, count=2) as running:
        for port in (health, health + 1):
            status, _, body = await http(port, "GET", "/readyz")
            assert (status, body) == (200, b"ready\n")
        running.process.send_signal(signal.SIGTERM)
        with trio.fail_after(1.5):  # inside the 2 s delay
            for port in (health, health + 1):
                while (await http(port, "GET", "/readyz"))[0] != 503:
                    await trio.sleep(0.01)
        output = await running.wait_exit()
        assert running.process.returncode == 0, output
