"""The PROXY protocol's metrics: exported only when the feature is on."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from tests.conftest import PKIFiles
from trio_tls_dtls.service.metrics import metrics_registry
from trio_tls_dtls.service.service import Service

pytestmark = pytest.mark.timeout(60)


def test_metrics_exported_only_when_on(pki: PKIFiles) -> None:
    off = Service(pki.server_settings(), dtls=False)
    assert "proxy_headers" not in generate_latest(metrics_registry(off)).decode()
    service = Service(pki.server_settings(proxy_protocol=True), dtls=False)
    assert service.tls is not None
    service.tls.stats.proxy_accepted = 3
    service.tls.stats.proxy_rejected["untrusted"] = 2
    body = generate_latest(metrics_registry(service)).decode()
    assert 'trio_tlsd_tls_proxy_headers_total{outcome="accepted",reason=""} 3.0' in body
    assert 'trio_tlsd_tls_proxy_headers_total{outcome="rejected",reason="untrusted"} 2.0' in body
