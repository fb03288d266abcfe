"""The per-connection close line, the JSON log format and the Prometheus endpoint."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.test_cli import CLI, EMPTY_DIR, assert_one_line_error, run_cli
from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from tests.helpers import port_of, running_dtls_server, running_tls_server
from trio_tls_dtls import (
    HandshakeError,
    Service,
    open_dtls_channel,
    open_tls_stream,
    serve_metrics,
)
from trio_tls_dtls.core.dtls_records import parse_client_hello
from trio_tls_dtls.core.latency_histogram import LatencyHistogram
from trio_tls_dtls.service.log_format import JSONFormatter, make_formatter, status_line
from trio_tls_dtls.service.metrics import MAX_REQUEST, REQUEST_TIMEOUT, metrics_registry

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"


def close_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.conn for r in caplog.records if r.name == "trio_tls_dtls.access"]  # type: ignore[attr-defined]


async def wait_for_records(caplog: pytest.LogCaptureFixture, count: int) -> None:
    with trio.fail_after(5):
        while len(close_records(caplog)) < count:
            await trio.sleep(0.01)


async def test_tls_close_line_has_the_fields(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_tls_server(pki.mtls_server_settings()) as server:
        settings = pki.client_settings(with_cert=True)
        stream = await open_tls_stream(LOCAL, port_of(server), settings=settings)
        await stream.send_all(b"12345")
        assert await stream.receive_some() == b"12345"
        await stream.aclose()  # close_notify
        await wait_for_records(caplog, 1)
    [record] = close_records(caplog)
    assert record["transport"] == "tls"
    assert record["protocol"] == "TLSv1.3"
    assert record["cipher"]
    assert "CN=trio-tlsd client" in str(record["client_cert"])
    assert record["resumed"] is False
    assert (record["bytes_in"], record["bytes_out"]) == (5, 5)
    assert record["reason"] == "peer_closed"
    assert isinstance(record["duration_ms"], float)
    line = next(r.getMessage() for r in caplog.records if r.name == "trio_tls_dtls.access")
    assert line.startswith("closed peer=127.0.0.1:") and "reason=peer_closed" in line
    assert server.stats.closed_by_reason["peer_closed"] == 1
    assert (server.stats.bytes_in, server.stats.bytes_out) == (5, 5)


async def test_tls_close_reasons_for_failures_and_idle(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(idle_timeout=0.3)
    async with running_tls_server(settings) as server:
        raw = await trio.open_tcp_stream(LOCAL, port_of(server))
        await raw.send_all(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
        await wait_for_records(caplog, 1)
        await raw.aclose()
        stream = await open_tls_stream(LOCAL, port_of(server), settings=pki.client_settings())
        with trio.fail_after(5):
            assert await stream.receive_some() == b""  # idle: the server closes
        await wait_for_records(caplog, 2)
        await stream.aclose()
    failed, idle = close_records(caplog)
    assert failed["reason"] == "handshake_failed"
    assert failed["handshake_error"]
    assert failed["protocol"] is None
    assert idle["reason"] == "idle_timeout"


async def test_dtls_close_line(pki: PKIFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_dtls_server(pki.server_settings()) as server:
        channel = await open_dtls_channel(LOCAL, port_of(server), settings=pki.client_settings())
        await channel.send(b"abc")
        assert await channel.receive() == b"abc"
        await channel.aclose()
        await wait_for_records(caplog, 1)
    [record] = close_records(caplog)
    assert record["transport"] == "dtls"
    assert record["protocol"] == "DTLSv1.2"
    assert (record["bytes_in"], record["bytes_out"]) == (3, 3)
    assert record["reason"] == "peer_closed"


def test_json_formatter_carries_the_fields() -> None:
    record = logging.LogRecord(
        "trio_tls_dtls.access", logging.INFO, __file__, 1, "closed %s", ("x",), None
    )
    record.conn = {"peer": "127.0.0.1:1", "bytes_in": 3, "reason": "peer_closed"}
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "closed x"
    assert entry["level"] == "info"
    assert entry["logger"] == "trio_tls_dtls.access"
    assert entry["conn"]["bytes_in"] == 3
    assert entry["time"].endswith("+00:00")


async def http_get(port: int, path: str) -> tuple[str, str]:
    stream = await trio.open_tcp_stream(LOCAL, port)
    await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    reply = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            reply += chunk
    await stream.aclose()
    head, _, body = reply.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


async def send_second_client_hello(pki: PKIFiles, port: int, *, tamper: bool) -> None:
    """Do the cookie exchange, send the second ClientHello (bad cookie if *tamper*), go quiet."""
    client, hello = first_client_hello(pki)
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((LOCAL, 0))
        await sock.sendto(hello, (LOCAL, port))
        with trio.fail_after(5):
            client.receive_datagram(await sock.recv(65536))
        client.do_handshake()
        [second] = client.datagrams_to_send()
        if tamper:
            tampered = bytearray(second)
            tampered[second.index(parse_client_hello(second).cookie) + 3] ^= 0xFF
            second = bytes(tampered)
        await sock.sendto(second, (LOCAL, port))
        await trio.sleep(0.2)


async def send_bogus_cookie(pki: PKIFiles, port: int) -> None:
    await send_second_client_hello(pki, port, tamper=True)


async def test_metrics_endpoint_counts_handshakes_and_rejected_cookies(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings())
        await service.bind(0, LOCAL)
        await nursery.start(service.run)
        metrics_port = await nursery.start(serve_metrics, service, 0)

        status, body = await http_get(metrics_port, "/metrics")
        assert status == "HTTP/1.0 200 OK"
        assert sample(body, "trio_tlsd_handshakes_total", transport="tls", outcome="ok") == 0

        stream = await open_tls_stream(LOCAL, service.port, settings=pki.client_settings())
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
        await send_bogus_cookie(pki, service.port)
        _, body = await http_get(metrics_port, "/metrics")
        assert sample(body, "trio_tlsd_handshakes_total", transport="tls", outcome="ok") == 1
        assert sample(body, "trio_tlsd_tls_connections_active") == 1
        # One HelloVerifyRequest for the first ClientHello, one more for the bad cookie.
        assert sample(body, "trio_tlsd_dtls_cookies_total", outcome="sent") == 2
        assert sample(body, "trio_tlsd_dtls_cookies_total", outcome="rejected") == 1
        assert sample(body, "trio_tlsd_dtls_peers_active") == 0
        assert sample(body, "trio_tlsd_handshake_seconds_count", transport="tls") == 1
        assert sample(body, "trio_tlsd_handshake_seconds_bucket", transport="tls", le="+Inf") == 1
        assert sample(body, "trio_tlsd_offload_queue_depth") == 0

        await stream.aclose()
        with trio.fail_after(5):
            while service.tls is not None and service.tls.stats.active:
                await trio.sleep(0.01)
        _, body = await http_get(metrics_port, "/metrics")
        assert sample(body, "trio_tlsd_bytes_received_total", transport="tls") == 5
        assert sample(body, "trio_tlsd_closed_total", transport="tls", reason="peer_closed") == 1

        status, _ = await http_get(metrics_port, "/other")
        assert status == "HTTP/1.0 404 Not Found"
        nursery.cancel_scope.cancel()


async def test_cli_serve_with_metrics_port_and_json_logs(pki: PKIFiles) -> None:
    with trio.socket.socket() as probe:
        await probe.bind((LOCAL, 0))
        metrics_port = probe.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [*CLI, "serve", "--host", LOCAL, "--port", "0", "--tls-only",
         "--cert", str(pki.server_cert), "--key", str(pki.server_key),
         "--metrics-port", str(metrics_port), "--log-format", "json"],
        cwd=EMPTY_DIR, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(20):
            # "metrics at" is logged before the "serving ... on tcp" line: wait for both.
            while (
                b"metrics at http" not in output
                or not (found := re.search(rb"on tcp 127\.0\.0\.1:(\d+)", output))
                or not output.endswith(b"\n")
            ):
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        port = int(found.group(1))
        stream = await open_tls_stream(LOCAL, port, settings=pki.client_settings())
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        await stream.aclose()
        _, body = await http_get(metrics_port, "/metrics")
        assert sample(body, "trio_tlsd_handshakes_total", transport="tls", outcome="ok") == 1
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            while chunk := await process.stderr.receive_some():
                output += chunk
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0
    # Every line is JSON, the status lines (serving, connect with, drained) too.
    lines = [json.loads(line) for line in output.decode().splitlines()]
    status = [e["message"] for e in lines if e["logger"] == "trio_tls_dtls.cli"]
    assert any(m.startswith("trio-tlsd: serving TLS echo") for m in status)
    assert any(m.startswith("trio-tlsd: drained") for m in status)
    closes = [entry for entry in lines if entry["logger"] == "trio_tls_dtls.access"]
    assert closes and closes[0]["conn"]["reason"] == "peer_closed"
    assert any(e["message"].startswith("TLS handshake ok") for e in lines)


def test_status_line_follows_the_root_format() -> None:
    assert status_line("trio-tlsd: serving x") == "trio-tlsd: serving x"
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    try:
        entry = json.loads(status_line("port in use", level=logging.ERROR))
    finally:
        root.removeHandler(handler)
    assert entry["message"] == "port in use"
    assert entry["level"] == "error"
    assert entry["logger"] == "trio_tls_dtls.cli"


def test_bad_observability_options(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", "--log-format", "xml"), "--log-format")
    assert_one_line_error(run_cli("serve", "--metrics-port", "70000"), "--metrics-port")
    config = tmp_path / "bad.toml"
    config.write_text('log_format = "yaml"\n')
    assert_one_line_error(run_cli("check-config", str(config)), str(config), "'log_format'")


async def test_dtls_close_reasons_for_failures_and_idle(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.mtls_server_settings(idle_timeout=0.3, handshake_timeout=0.5)
    async with running_dtls_server(settings) as server:
        port = port_of(server)
        with trio.fail_after(5), pytest.raises(HandshakeError):  # no client certificate
            await open_dtls_channel(LOCAL, port, settings=pki.client_settings())
        await wait_for_records(caplog, 1)
        channel = await open_dtls_channel(LOCAL, port, settings=pki.client_settings(with_cert=True))
        await wait_for_records(caplog, 2)  # idle: the server removes the peer
        await channel.aclose()
        await send_second_client_hello(pki, port, tamper=False)  # admitted, then silent
        await wait_for_records(caplog, 3)
    failed, idle, timed_out = close_records(caplog)
    assert failed["transport"] == "dtls"
    assert failed["reason"] == "handshake_failed"
    assert failed["handshake_error"] == "peer did not return a certificate"
    assert failed["client_cert"] is None
    assert idle["reason"] == "idle_timeout"
    assert "CN=trio-tlsd client" in str(idle["client_cert"])
    assert (idle["bytes_in"], idle["bytes_out"]) == (0, 0)
    assert timed_out["reason"] == "handshake_timeout"
    assert server.stats.closed_by_reason == {
        "handshake_failed": 1,
        "idle_timeout": 1,
        "handshake_timeout": 1,
    }


async def test_metrics_count_failed_handshakes_by_reason(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings(handshake_timeout=0.5))
        await service.bind(0, LOCAL)
        await nursery.start(service.run)
        metrics_port = await nursery.start(serve_metrics, service, 0)
        raw = await trio.open_tcp_stream(LOCAL, service.port)
        await raw.send_all(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
        with trio.fail_after(5):
            assert await raw.receive_some() is not None  # the server closes (maybe an alert)
        await raw.aclose()
        await send_second_client_hello(pki, service.port, tamper=False)
        assert service.tls is not None and service.dtls is not None
        with trio.fail_after(5):
            while sum(service.dtls.stats.closed_by_reason.values()) < 1:
                await trio.sleep(0.01)

        _, body = await http_get(metrics_port, "/metrics")
        [tls_reason] = service.tls.stats.handshakes_failed
        assert tls_reason  # OpenSSL's words, e.g. "http request"
        labels = {"transport": "tls", "outcome": "failed"}
        assert sample(body, "trio_tlsd_handshakes_total", **labels, reason=tls_reason) == 1
        labels = {"transport": "dtls", "outcome": "failed"}
        assert sample(body, "trio_tlsd_handshakes_total", **labels, reason="timeout") == 1
        assert (
            sample(body, "trio_tlsd_closed_total", transport="tls", reason="handshake_failed") == 1
        )
        labels = {"transport": "dtls", "reason": "handshake_timeout"}
        assert sample(body, "trio_tlsd_closed_total", **labels) == 1
        assert sample(body, "trio_tlsd_dtls_cookies_total", outcome="verified") == 1
        assert sample(body, "trio_tlsd_dtls_peers_total") == 1
        assert sample(body, "trio_tlsd_handshake_seconds_count", transport="tls") == 0
        assert sample(body, "trio_tlsd_reloads_total", outcome="ok") == 0
        nursery.cancel_scope.cancel()


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = LatencyHistogram()
    for seconds in (0.001, 0.003, 0.003, 60.0):
        hist.observe(seconds)
    cumulative = dict(hist.cumulative())
    assert cumulative[0.001] == 1  # an observation on a bound counts in that bucket
    assert cumulative[0.0025] == 1
    assert cumulative[0.005] == 3
    assert cumulative[10.0] == 3
    assert cumulative[float("inf")] == 4 == hist.count
    assert hist.total == pytest.approx(60.007)


def test_registry_exports_the_histogram_of_one_service(pki: PKIFiles) -> None:
    service = Service(pki.server_settings())
    assert service.tls is not None
    service.tls.stats.handshake_seconds.observe(0.004)
    service.tls.stats.bytes_out = 7
    body = generate_latest(metrics_registry(service)).decode()
    assert sample(body, "trio_tlsd_handshake_seconds_bucket", transport="tls", le="0.0025") == 0
    assert sample(body, "trio_tlsd_handshake_seconds_bucket", transport="tls", le="0.005") == 1
    assert sample(body, "trio_tlsd_handshake_seconds_sum", transport="tls") == 0.004
    assert sample(body, "trio_tlsd_bytes_sent_total", transport="tls") == 7
    assert "trio_tlsd_" not in generate_latest(REGISTRY).decode()  # not the global registry


def test_json_formatter_keeps_exceptions_and_rejects_unknown_formats() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "trio_tls_dtls", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = json.loads(make_formatter("json").format(record))
    assert entry["level"] == "error"
    assert "conn" not in entry
    assert "ValueError: boom" in entry["exception"]
    assert make_formatter("text").format(record).split(" ", 2)[2].startswith("ERROR trio_tls_dtls")
    with pytest.raises(ValueError, match="xml"):
        make_formatter("xml")


def test_bad_metrics_options(pki: PKIFiles, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", "--metrics-port", "0"), "--metrics-port")
    config = tmp_path / "bad.toml"
    config.write_text("metrics_port = 0\n")
    assert_one_line_error(run_cli("check-config", str(config)), str(config), "'metrics_port'")
    config.write_text("metrics_host = 5\n")
    assert_one_line_error(run_cli("check-config", str(config)), str(config), "'metrics_host'")


async def raw_http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(LOCAL, port)
    await stream.send_all(request)
    reply = b""
    # Well before REQUEST_TIMEOUT: the server answers as soon as it has read enough.
    with trio.fail_after(REQUEST_TIMEOUT - 1):
        while chunk := await stream.receive_some():
            reply += chunk
    await stream.aclose()
    return reply


async def test_metrics_endpoint_refuses_other_methods_and_bounds_requests(pki: PKIFiles) -> None:
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings(), dtls=False)
        port = await nursery.start(serve_metrics, service, 0)
        reply = await raw_http(port, b"POST /metrics HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 405 ")
        # A request line that never ends is cut after MAX_REQUEST bytes, not read
        # forever: an error reply, or a reset when the unread rest is thrown away.
        try:
            reply = await raw_http(port, b"GET /metrics" + b"x" * (MAX_REQUEST + 100))
        except trio.BrokenResourceError:
            pass
        else:
            assert reply.startswith(b"HTTP/1.0 404 ")
        reply = await raw_http(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"trio_tlsd_tls_connections_total 0.0" in reply
        assert b"trio_tlsd_dtls_" not in reply  # no DTLS server, no DTLS metrics
        nursery.cancel_scope.cancel()


async def test_metrics_endpoint_survives_a_reset_connection(pki: PKIFiles) -> None:
    # A handler's exception would end serve_listeners and the whole service.
    async with trio.open_nursery() as nursery:
        service = Service(pki.server_settings())
        await service.bind(0, LOCAL)
        await nursery.start(service.run)
        metrics_port = await nursery.start(serve_metrics, service, 0)
        with trio.socket.socket() as sock:
            await sock.connect((LOCAL, metrics_port))
            await sock.send(b"GET /met")  # half a request, then RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.sleep(0.1)  # let the server read the reset
        status, body = await http_get(metrics_port, "/metrics")
        assert status == "HTTP/1.0 200 OK"
        assert "trio_tlsd_handshakes_total" in body
        nursery.cancel_scope.cancel()
