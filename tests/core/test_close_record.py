"""The close record and its access line: the documented format, byte for byte."""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trio_tls_dtls.core.close_record import (
    ACCESS_LOGGER,
    CloseReason,
    CloseRecord,
    access_fields,
    count_close,
    log_close,
)
from trio_tls_dtls.core.peer_info import PeerInfo

INFO = PeerInfo(
    address=("2001:db8::1", 4433),
    transport="dtls",
    protocol="DTLSv1.2",
    cipher="ECDHE-ECDSA-AES128-GCM-SHA256",
    resumed=True,
)


def test_the_access_line_and_its_json_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    record = CloseRecord(
        reason="peer_closed",
        transport="dtls",
        peer=("2001:db8::1", 4433),
        info=INFO,
        bytes_in=12,
        bytes_out=34,
        duration=1.23456,
    )
    log_close(record)
    [logged] = caplog.records
    assert logged.name == "trio_tls_dtls.access"
    assert logged.getMessage() == (
        "closed peer=[2001:db8::1]:4433 transport=dtls protocol=DTLSv1.2 "
        "cipher=ECDHE-ECDSA-AES128-GCM-SHA256 client_cert=- resumed=yes bytes_in=12 "
        "bytes_out=34 duration_ms=1234.6 reason=peer_closed"
    )
    assert logged.conn == access_fields(record)  # type: ignore[attr-defined]
    assert list(logged.conn) == [  # type: ignore[attr-defined]
        "peer", "transport", "protocol", "cipher", "client_cert", "resumed",
        "bytes_in", "bytes_out", "duration_ms", "reason",
    ]  # fmt: skip


def test_a_failed_handshake_line_has_its_error_and_dashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    error = "peer did not return a certificate"
    record = CloseRecord("handshake_failed", "tls", ("127.0.0.1", 5), None, 0, 0, 0.01, error)
    log_close(record)
    assert caplog.records[0].getMessage() == (
        "closed peer=127.0.0.1:5 transport=tls protocol=- cipher=- client_cert=- resumed=- "
        "bytes_in=0 bytes_out=0 duration_ms=10.0 reason=handshake_failed "
        'handshake_error="peer did not return a certificate"'
    )
    assert access_fields(record)["protocol"] is None  # null in JSON


def test_nothing_is_formatted_when_the_access_log_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS_LOGGER)
    log_close(CloseRecord("drained", "tls", None, None, 0, 0, 0.0))
    assert caplog.records == []


@dataclass
class Counts:
    bytes_in: int = 0
    bytes_out: int = 0
    closed_by_reason: Counter[str] = field(default_factory=Counter)


def test_count_close_adds_bytes_and_reason() -> None:
    counts = Counts()
    count_close(counts, CloseRecord("handler_done", "tls", None, INFO, 4, 2, 0.1))
    count_close(counts, CloseRecord("handler_done", "tls", None, INFO, 1, 1, 0.1))
    count_close(counts, CloseRecord("idle_timeout", "tls", None, INFO, 0, 0, 30.0))
    assert (counts.bytes_in, counts.bytes_out) == (5, 3)
    assert counts.closed_by_reason == {"handler_done": 2, "idle_timeout": 1}


def test_the_record_is_frozen_and_the_reasons_are_the_documented_ones() -> None:
    record = CloseRecord("removed", "dtls", None, None, 0, 0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.reason = "drained"  # type: ignore[misc]
    documented = {
        "peer_closed", "handler_done", "idle_timeout", "lifetime", "handshake_timeout",
        "handshake_failed",
        "broken", "drained", "proxy_untrusted", "proxy_header", "removed", "error", "cancelled",
    }  # fmt: skip
    assert set(typing.get_args(CloseReason)) == documented


def test_every_reason_is_in_the_metrics_reference() -> None:
    text = (Path(__file__).parents[2] / "docs" / "reference" / "metrics.rst").read_text()
    missing = [r for r in typing.get_args(CloseReason) if f"``{r}``" not in text]
    assert missing == []
