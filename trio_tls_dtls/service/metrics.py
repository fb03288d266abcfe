"""Prometheus metrics for a running :class:`~trio_tls_dtls.service.service.Service`.

Nothing is counted twice: the servers keep plain counters in their stats
dataclasses (closes and bytes are counted there by the service's
:class:`~.access_log.AccessLog`, from each close record), and
:class:`ServiceCollector` reads them when Prometheus scrapes. Each service
gets its own ``CollectorRegistry`` (never the global one), so two services
in one process do not mix.

:func:`serve_metrics` answers ``GET /metrics`` over plain HTTP from the same
Trio loop as the service (``trio-tlsd serve --metrics-port P``), and the
health and readiness probes ``/healthz`` and ``/readyz`` beside it
(:mod:`.health`). It listens on 127.0.0.1 unless told otherwise: metrics say
a lot about who connects. docs/reference/metrics.rst lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..core.latency_histogram import LatencyHistogram
from .certificate_expiry import CertificateExpiry
from .exposition import BuildInfo, exposition_response
from .health import health_routes
from .http_endpoint import MAX_REQUEST, REQUEST_TIMEOUT, Request, Response, Route, serve_http
from .service import Service

__all__ = [
    "MAX_REQUEST",
    "REQUEST_TIMEOUT",
    "ServiceCollector",
    "metrics_registry",
    "metrics_routes",
    "serve_metrics",
]

PREFIX = "trio_tlsd_"


class ServiceCollector(Collector):
    """Reads a service's counters at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        handshakes = CounterMetricFamily(
            PREFIX + "handshakes",
            "Handshakes finished, by transport, outcome (ok/failed) and failure reason",
            labels=["transport", "outcome", "reason"],
        )
        latency = HistogramMetricFamily(
            PREFIX + "handshake_seconds",
            "Time from the first byte of a handshake to its end (successful ones)",
            labels=["transport"],
        )
        closed = CounterMetricFamily(
            PREFIX + "closed",
            "TLS connections and DTLS peers ended, by why",
            labels=["transport", "reason"],
        )
        received = CounterMetricFamily(
            PREFIX + "bytes_received", "Application bytes received", labels=["transport"]
        )
        sent = CounterMetricFamily(
            PREFIX + "bytes_sent", "Application bytes sent", labels=["transport"]
        )
        for transport, server in (("tls", service.tls), ("dtls", service.dtls)):
            if server is None:
                continue
            stats = server.stats
            handshakes.add_metric([transport, "ok", ""], stats.handshakes_ok)
            for reason, n in sorted(stats.handshakes_failed.items()):
                handshakes.add_metric([transport, "failed", reason], n)
            _add_histogram(latency, transport, stats.handshake_seconds)
            for reason, n in sorted(stats.closed_by_reason.items()):
                closed.add_metric([transport, reason], n)
            received.add_metric([transport], stats.bytes_in)
            sent.add_metric([transport], stats.bytes_out)
        yield from (handshakes, latency, closed, received, sent)
        if service.tls is not None:
            yield from _tls_metrics(service)
        if service.dtls is not None:
            yield from _dtls_metrics(service)
        offload = service.offload
        yield GaugeMetricFamily(
            PREFIX + "offload_queue_depth",
            "Crypto calls waiting for a worker thread",
            value=offload.queue_depth,
        )
        yield GaugeMetricFamily(
            PREFIX + "offload_threads_busy",
            "Crypto calls running in worker threads",
            value=offload.busy_threads,
        )
        reloads = CounterMetricFamily(
            PREFIX + "reloads",
            "Certificate reloads (SIGHUP, changed files), by outcome",
            labels=["outcome"],
        )
        reloads.add_metric(["ok"], service.reloads)
        reloads.add_metric(["failed"], service.reloads_failed)
        yield reloads


def _add_histogram(family: HistogramMetricFamily, transport: str, hist: LatencyHistogram) -> None:
    buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in hist.cumulative()]
    family.add_metric([transport], buckets, hist.total)


def _tls_metrics(service: Service) -> Iterator[Metric]:
    assert service.tls is not None
    stats = service.tls.stats
    yield GaugeMetricFamily(
        PREFIX + "tls_connections_active", "TLS connections open now", value=stats.active
    )
    yield CounterMetricFamily(
        PREFIX + "tls_connections", "TLS connections accepted", value=stats.accepted
    )
    yield CounterMetricFamily(
        PREFIX + "tls_connections_rejected",
        "TLS connections closed at once because max_connections were open",
        value=stats.rejected_over_limit,
    )
    per_source = CounterMetricFamily(
        PREFIX + "tls_connections_refused_per_source",
        "TLS connections closed at once by the per-source limits, by limit",
        labels=["limit"],
    )
    for limit in ("rate", "connections"):
        per_source.add_metric([limit], stats.rejected_per_source[limit])
    yield per_source
    if service.tls.settings.proxy_protocol:
        proxy = CounterMetricFamily(
            PREFIX + "tls_proxy_headers",
            "PROXY protocol headers: accepted, or the connection refused before TLS (by reason)",
            labels=["outcome", "reason"],
        )
        proxy.add_metric(["accepted", ""], stats.proxy_accepted)
        for reason, n in sorted(stats.proxy_rejected.items()):
            proxy.add_metric(["rejected", reason], n)
        yield proxy


def _dtls_metrics(service: Service) -> Iterator[Metric]:
    assert service.dtls is not None
    stats = service.dtls.stats
    yield GaugeMetricFamily(
        PREFIX + "dtls_peers_active", "DTLS peers in the peer table now", value=stats.peers_active
    )
    yield CounterMetricFamily(
        PREFIX + "dtls_peers", "DTLS peers admitted (valid cookie)", value=stats.peers_total
    )
    cookies = CounterMetricFamily(
        PREFIX + "dtls_cookies",
        "DTLS cookies sent (HelloVerifyRequests), verified and rejected",
        labels=["outcome"],
    )
    cookies.add_metric(["sent"], stats.cookies_sent)
    cookies.add_metric(["verified"], stats.cookies_verified)
    cookies.add_metric(["rejected"], stats.cookies_rejected)
    yield cookies
    yield CounterMetricFamily(
        PREFIX + "dtls_datagrams_received",
        "UDP datagrams received",
        value=stats.datagrams_received,
    )
    dropped = CounterMetricFamily(
        PREFIX + "dtls_datagrams_dropped", "UDP datagrams dropped, by reason", labels=["reason"]
    )
    for reason, n in sorted(stats.dropped.items()):
        dropped.add_metric([reason], n)
    yield dropped
    removed = CounterMetricFamily(
        PREFIX + "dtls_peers_removed",
        "DTLS peers removed early: evicted from a full table, or replaced by a new handshake",
        labels=["why"],
    )
    removed.add_metric(["evicted"], stats.peers_evicted)
    removed.add_metric(["replaced"], stats.peers_replaced)
    yield removed


def metrics_registry(service: Service) -> CollectorRegistry:
    """A registry holding only *service*'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    registry.register(CertificateExpiry(service))
    registry.register(BuildInfo())
    return registry


async def serve_metrics(
    service: Service,
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``/metrics``, ``/healthz`` and ``/readyz`` on *host*:*port* until cancelled.

    ``await nursery.start(serve_metrics, service, 0)`` returns the port.
    """
    await serve_http(metrics_routes(service), port, host=host, task_status=task_status)


def metrics_routes(service: Service) -> dict[str, Route]:
    """``/metrics``, ``/healthz`` and ``/readyz`` for *service*: the metrics listener's routes."""
    registry = metrics_registry(service)

    def metrics(request: Request) -> Response:
        return exposition_response(registry, request)

    return {"/metrics": metrics, **health_routes(service)}
