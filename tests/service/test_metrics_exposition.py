"""One metrics target for the service: formats, gzip, HEAD, the new series, --workers.

Against real servers on loopback: a single process's endpoint in this
process, and ``tests/workers_app.py`` (two workers, the supervisor's one
endpoint) as a subprocess.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.test_cli_errors import free_port
from tests.conftest import PKIFiles
from tests.service.test_workers import SERVING, Workers, _running
from trio_tls_dtls import CertificateSettings, Service, open_tls_stream, serve_metrics
from trio_tls_dtls.service.metrics import metrics_registry
from trio_tls_dtls.service.metrics_merge import Retired, merge, parse

LOCAL = "127.0.0.1"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(
    port: int, path: str = "/metrics", method: str = "GET", headers: Iterable[str] = ()
) -> tuple[int, dict[str, str], bytes]:
    """One request; the status, the headers (lower-case names) and the body."""
    stream = await trio.open_tcp_stream(LOCAL, port)
    head = "".join(f"{line}\r\n" for line in headers)
    await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: t\r\n{head}\r\n".encode())
    reply = b""
    with trio.fail_after(8):
        while chunk := await stream.receive_some():
            reply += chunk
    await stream.aclose()
    top, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = top.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status.split()[1]), fields, body


def samples(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# -- a single process ----------------------------------------------------------------


@asynccontextmanager
async def single(pki: PKIFiles) -> AsyncIterator[tuple[int, CertificateSettings]]:
    other = pki.write_issued("sni-metrics", pki.pki.issue_server(["other.test"]))
    sni = CertificateSettings(other.cert_file, other.key_file, server_names=("other.test",))
    service = Service(pki.server_settings(sni_certificates=(sni,)), dtls=False)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, service, 0)
        yield port, sni
        nursery.cancel_scope.cancel()


async def test_openmetrics_when_asked_text_otherwise(pki: PKIFiles) -> None:
    async with single(pki) as (port, _):
        status, headers, body = await get(port, headers=[f"Accept: {OPENMETRICS}"])
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert body.endswith(b"# EOF\n")
        assert b"trio_tlsd_handshakes_total" in body
        status, headers, body = await get(port)
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"# EOF" not in body


async def test_gzip_when_accepted_and_head(pki: PKIFiles) -> None:
    async with single(pki) as (port, _):
        _, plain_headers, plain = await get(port)
        assert "content-encoding" not in plain_headers
        status, headers, body = await get(port, headers=["Accept-Encoding: gzip, br"])
        assert (status, headers["content-encoding"]) == (200, "gzip")
        assert int(headers["content-length"]) == len(body) < len(plain)
        assert samples(gzip.decompress(body)).keys() == samples(plain).keys()
        _, refused, _ = await get(port, headers=["Accept-Encoding: gzip;q=0"])
        assert "content-encoding" not in refused
        status, headers, body = await get(port, method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["content-type"] == plain_headers["content-type"]
        assert int(headers["content-length"]) > 0


def _not_after(path: Path) -> tuple[str, float]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.rfc4514_string(), cert.not_valid_after_utc.timestamp()


async def test_build_info_and_certificate_not_after(pki: PKIFiles) -> None:
    async with single(pki) as (port, sni):
        found = samples((await get(port))[2])
    builds = [labels for (name, labels) in found if name == "trio_tlsd_build_info"]
    assert len(builds) == 1
    build = dict(builds[0])
    assert build["version"] == "0.1.0"
    assert build["python"] == ".".join(map(str, sys.version_info[:3]))
    assert build["openssl"].startswith("OpenSSL ")
    for path in (pki.server_cert, sni.cert_file):
        subject, not_after = _not_after(path)
        name = "trio_tlsd_certificate_not_after_timestamp_seconds"
        assert value(found, name, file=str(path), subject=subject) == not_after


SUPERVISOR_SERIES = [
    "trio_tlsd_worker_restarts_total",
    "trio_tlsd_workers",
    "trio_tlsd_workers_scraped",
]


def test_the_metrics_reference_lists_every_series(pki: PKIFiles) -> None:
    text = (Path(__file__).parents[2] / "docs" / "reference" / "metrics.rst").read_text()
    registry = metrics_registry(Service(pki.server_settings(proxy_protocol=True)))
    names = [m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()]
    assert len(names) > 20
    missing = [name for name in names + SUPERVISOR_SERIES if f"``{name}``" not in text]
    assert missing == []


# -- adding up workers, without sockets ------------------------------------------------

_WORKER = """\
# HELP trio_tlsd_handshakes_total h
# TYPE trio_tlsd_handshakes_total counter
trio_tlsd_handshakes_total{transport="tls",outcome="ok",reason=""} %d
# HELP trio_tlsd_tls_connections_active a
# TYPE trio_tlsd_tls_connections_active gauge
trio_tlsd_tls_connections_active %d
# HELP trio_tlsd_certificate_not_after_timestamp_seconds c
# TYPE trio_tlsd_certificate_not_after_timestamp_seconds gauge
trio_tlsd_certificate_not_after_timestamp_seconds{file="a.pem",subject="CN=a"} %d
"""
HANDSHAKES = (
    "trio_tlsd_handshakes_total",
    (("outcome", "ok"), ("reason", ""), ("transport", "tls")),
)
ACTIVE = ("trio_tlsd_tls_connections_active", ())


def _merged(*expositions: str) -> Samples:
    out: Samples = {}
    for metric in merge(parse(text) for text in expositions):
        for s in metric.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_merge_sums_counters_and_gauges_and_keeps_one_not_after() -> None:
    found = _merged(_WORKER % (3, 1, 100), _WORKER % (4, 2, 100))
    assert found[HANDSHAKES] == 7
    assert found[ACTIVE] == 3
    cert = (
        "trio_tlsd_certificate_not_after_timestamp_seconds",
        (("file", "a.pem"), ("subject", "CN=a")),
    )
    assert found[cert] == 100


def test_counters_of_a_replaced_worker_carry_over_gauges_do_not() -> None:
    retired = Retired()
    first = retired.carry(0, 11, parse(_WORKER % (5, 2, 1)))
    assert _merged_one(first)[HANDSHAKES] == 5
    replaced = _merged_one(retired.carry(0, 12, parse(_WORKER % (1, 1, 1))))  # new pid
    assert (replaced[HANDSHAKES], replaced[ACTIVE]) == (6, 1)
    again = _merged_one(retired.carry(0, 12, parse(_WORKER % (2, 0, 1))))
    assert (again[HANDSHAKES], again[ACTIVE]) == (7, 0)
    other_slot = _merged_one(retired.carry(1, 13, parse(_WORKER % (4, 0, 1))))
    assert other_slot[HANDSHAKES] == 4
    # The old process answers once more (a reload's overlap): not counted twice.
    late = _merged_one(retired.carry(0, 11, parse(_WORKER % (5, 2, 1))))
    assert (late[HANDSHAKES], late[ACTIVE]) == (7, 0)


def _merged_one(exposition: dict[str, object]) -> Samples:
    out: Samples = {}
    for metric in merge([exposition]):  # type: ignore[list-item]
        for s in metric.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- two workers, one endpoint -----------------------------------------------------------


@asynccontextmanager
async def two_workers(pki: PKIFiles) -> AsyncIterator[tuple[Workers, int]]:
    port, metrics = free_port(), free_port()
    command = [sys.executable, "-m", "tests.workers_app", str(port)]
    command += [str(pki.server_cert), str(pki.server_key), "2", f"metrics={metrics}"]
    async with _running(command, port, 2) as running:
        yield running, metrics


async def _handshakes_until_both_served(pki: PKIFiles, port: int) -> dict[int, int]:
    """TLS connections until both workers have served some; connections per worker pid."""
    served: dict[int, int] = {}
    for _ in range(200):
        stream = await open_tls_stream(LOCAL, port, settings=pki.client_settings())
        pid = int(await stream.receive_some())
        await stream.aclose()
        served[pid] = served.get(pid, 0) + 1
        if len(served) == 2 and sum(served.values()) >= 6:
            break
    assert len(served) == 2, served
    return served


async def _scrape(metrics: int) -> Samples:
    status, _, body = await get(metrics)
    assert status == 200, body
    return samples(body)


TLS_OK = {"transport": "tls", "outcome": "ok", "reason": ""}


async def test_one_endpoint_adds_up_both_workers(pki: PKIFiles) -> None:
    async with two_workers(pki) as (running, metrics):
        served = await _handshakes_until_both_served(pki, running.port)
        found = await _scrape(metrics)
        assert value(found, "trio_tlsd_handshakes_total", **TLS_OK) == sum(served.values())
        assert value(found, "trio_tlsd_workers") == 2
        assert value(found, "trio_tlsd_workers_scraped") == 2
        assert value(found, "trio_tlsd_worker_restarts_total") == 0
        assert value(found, "trio_tlsd_tls_connections_active") == 0
        builds = [name for (name, _) in found if name == "trio_tlsd_build_info"]
        assert builds == ["trio_tlsd_build_info"]  # the supervisor's, not one per worker
        subject, not_after = _not_after(pki.server_cert)
        name = "trio_tlsd_certificate_not_after_timestamp_seconds"
        assert value(found, name, file=str(pki.server_cert), subject=subject) == not_after
        assert await get(metrics, "/readyz") == (200, _any_headers(), b"ready: 2 workers\n")
        assert (await get(metrics, "/healthz"))[0] == 200
        # The supervisor's endpoint threads block the signals it waits for in
        # its main thread: a SIGTERM or SIGHUP given to one of them would
        # otherwise end the supervisor. (The main thread's own mask reads as
        # empty while it sits in sigtimedwait, which unblocks what it waits for.)
        supervisor = running.process.pid
        tasks = os.listdir(f"/proc/{supervisor}/task")
        threads = [Path(f"/proc/{supervisor}/task/{t}") for t in tasks if t != str(supervisor)]
        assert threads  # the endpoint's
        for task in threads:
            status = (task / "status").read_text()
            blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
            for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                assert blocked & (1 << (signum - 1)), (task, signum)
        status, headers, body = await get(metrics, method="HEAD")
        assert (status, body) == (200, b"")
        status, headers, body = await get(
            metrics, headers=[f"Accept: {OPENMETRICS}", "Accept-Encoding: gzip"]
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert gzip.decompress(body).endswith(b"# EOF\n")
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()
        assert running.process.returncode == 0


class _any_headers(dict[str, str]):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict)


async def test_restarts_and_reloads_never_fail_the_endpoint_and_totals_stay(
    pki: PKIFiles,
) -> None:
    async with two_workers(pki) as (running, metrics):
        served = await _handshakes_until_both_served(pki, running.port)
        total = sum(served.values())
        assert value(await _scrape(metrics), "trio_tlsd_handshakes_total", **TLS_OK) == total
        victim = next(iter(served))
        os.kill(victim, signal.SIGKILL)
        await running.read_until(re.compile(rb"worker \d restarted: pid"))
        with trio.fail_after(10):
            while True:  # every scrape answers, whoever is being replaced
                found = await _scrape(metrics)
                if value(found, "trio_tlsd_workers_scraped") == 2:
                    break
                await trio.sleep(0.05)
        assert value(found, "trio_tlsd_worker_restarts_total") == 1
        assert value(found, "trio_tlsd_handshakes_total", **TLS_OK) == total  # carried over
        serving = len(SERVING.findall(running.output))
        scrapes = 0

        async def scrape_throughout(done: trio.Event) -> None:
            nonlocal scrapes
            while not done.is_set():  # every scrape answers, and the total never moves
                found = await _scrape(metrics)
                assert value(found, "trio_tlsd_handshakes_total", **TLS_OK) == total
                scrapes += 1
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(scrape_throughout, done)
            running.process.send_signal(signal.SIGHUP)
            await running.read_until(SERVING, serving + 2)  # the new generation
            await running.read_until(re.compile(rb": drained:"), 2)  # the old one drained
            done.set()
        assert scrapes > 0
        with trio.fail_after(10):
            while value(found := await _scrape(metrics), "trio_tlsd_workers_scraped") != 2:
                await trio.sleep(0.05)
        assert value(found, "trio_tlsd_handshakes_total", **TLS_OK) == total
        assert (await get(metrics, "/readyz"))[0] == 200
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()
