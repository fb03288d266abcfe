"""The service's access log: each close counted once, into its own server's stats."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls import Service
from trio_tls_dtls.core.close_record import CloseReason, CloseRecord
from trio_tls_dtls.service.access_log import AccessLog


def record(transport: str, reason: CloseReason = "peer_closed") -> CloseRecord:
    return CloseRecord(reason, transport, ("127.0.0.1", 1), None, 3, 4, 0.5)


def test_the_service_gives_both_servers_one_access_log(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.access")
    service = Service(pki.server_settings())
    assert service.tls is not None and service.dtls is not None
    assert service.tls.lifecycle.on_close is service.access_log
    assert service.dtls.lifecycle.on_close is service.access_log
    service.access_log(record("tls"))
    service.access_log(record("dtls", "idle_timeout"))
    service.access_log(record("dtls", "idle_timeout"))
    assert service.tls.stats.closed_by_reason == {"peer_closed": 1}
    assert (service.tls.stats.bytes_in, service.tls.stats.bytes_out) == (3, 4)
    assert service.dtls.stats.closed_by_reason == {"idle_timeout": 2}
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_tls_dtls.access"]
    assert len(lines) == 3
    assert lines[1].startswith("closed peer=127.0.0.1:1 transport=dtls ")


def test_a_transport_it_does_not_count_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.access")
    log = AccessLog()
    log(record("tls"))
    assert [r.name for r in caplog.records] == ["trio_tls_dtls.access"]
