"""Per-source refusals in the metrics."""

from __future__ import annotations

from prometheus_client import generate_latest

from tests.conftest import PKIFiles
from trio_tls_dtls import (
    Service,
)
from trio_tls_dtls.service.metrics import metrics_registry

FLOODER, VICTIM = "127.0.0.2", "127.0.0.3"

# -- the sans-IO bucket --------------------------------------------------------------


def test_metrics_export_the_refusals(pki: PKIFiles) -> None:
    service = Service(pki.server_settings())
    assert service.tls is not None and service.dtls is not None
    service.tls.stats.rejected_per_source["rate"] = 7
    service.tls.stats.rejected_per_source["connections"] = 2
    service.dtls.stats.dropped["per_source_rate"] = 5
    body = generate_latest(metrics_registry(service)).decode()
    name = "trio_tlsd_tls_connections_refused_per_source_total"
    assert f'{name}{{limit="rate"}} 7.0' in body
    assert f'{name}{{limit="connections"}} 2.0' in body
    assert 'trio_tlsd_dtls_datagrams_dropped_total{reason="per_source_rate"} 5.0' in body
