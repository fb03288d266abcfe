"""The close record: what is known about a TLS connection or DTLS peer when it ends.

The drivers build one :class:`CloseRecord` per connection or peer (and per
connection refused before TLS) and hand it to a *sink*, a callable. They do
not log it or count it themselves: that is the sink's business. The service
passes its own (:mod:`trio_tls_dtls.service.access_log`); a server used on
its own (``serve_tls``, ``serve_dtls``) counts the record into its stats and
writes the access line, with :func:`count_close` and :func:`log_close`.

The access line is a documented contract (docs/reference/metrics.rst): the
logger ``trio_tls_dtls.access``, the message ``closed peer=… transport=…
protocol=… cipher=… client_cert=… resumed=… bytes_in=… bytes_out=…
duration_ms=… reason=…``, then ``handshake_error=…`` when the handshake
failed and ``psk_identity=…`` when a pre-shared key authenticated it, and
the same fields as ``record.conn`` (a dict) for the JSON log format. Change
neither the names nor their order; new fields are only ever added at the end.

Reasons (:data:`CloseReason`): ``peer_closed`` (the peer's close_notify),
``handler_done`` (our handler returned first), ``idle_timeout`` (no
application data either way for ``idle_timeout``), ``lifetime`` (open for
``max_connection_lifetime``),
``handshake_timeout``, ``handshake_failed`` (with ``handshake_error``),
``broken`` (the transport failed or the peer vanished without
close_notify), ``drained`` (a graceful shutdown), ``proxy_untrusted`` (a
PROXY protocol listener refused a peer not in ``proxy_trusted``),
``proxy_header`` (its PROXY header was bad, late or cut short), ``removed``
(a DTLS peer replaced by a new handshake from its address, or evicted from a
full table), ``error`` (the handler raised), ``cancelled`` (a hard stop).
A new reason is added here, where it is decided (drivers/lifecycle.py or a
server), and in docs/reference/metrics.rst.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .peer_info import Address, PeerInfo, format_address

__all__ = [
    "ACCESS_LOGGER",
    "CloseCounts",
    "CloseReason",
    "CloseRecord",
    "CloseSink",
    "access_fields",
    "count_close",
    "log_close",
]

ACCESS_LOGGER = "trio_tls_dtls.access"

CloseReason = Literal[
    "peer_closed",
    "handler_done",
    "idle_timeout",
    "lifetime",
    "handshake_timeout",
    "handshake_failed",
    "broken",
    "drained",
    "proxy_untrusted",
    "proxy_header",
    "removed",
    "error",
    "cancelled",
]

_access_logger = logging.getLogger(ACCESS_LOGGER)


@dataclass(frozen=True, slots=True)
class CloseRecord:
    """One TLS connection or DTLS peer, as it ended.

    ``info`` is None when the handshake never finished (its fields are then
    unknown); ``bytes_in``/``bytes_out`` count application data; ``duration``
    is in seconds, from the connection's start (after admission) to its
    close.
    """

    reason: CloseReason
    transport: str
    """``tls`` or ``dtls``."""
    peer: Address | None
    info: PeerInfo | None
    bytes_in: int
    bytes_out: int
    duration: float
    handshake_error: str | None = None


CloseSink = Callable[[CloseRecord], object]
"""Where a server sends each :class:`CloseRecord`."""


def access_fields(record: CloseRecord) -> dict[str, Any]:
    """The access line's fields, in its order (None for what was never learnt)."""
    info = record.info
    fields: dict[str, Any] = {
        "peer": format_address(record.peer),
        "transport": record.transport,
        "protocol": info.protocol if info else None,
        "cipher": info.cipher if info else None,
        "client_cert": info.subject if info else None,
        "resumed": info.resumed if info else None,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "duration_ms": round(record.duration * 1000, 1),
        "reason": record.reason,
    }
    if record.handshake_error:
        fields["handshake_error"] = record.handshake_error
    if info is not None and info.psk_identity is not None:
        fields["psk_identity"] = info.psk_identity
    return fields


def log_close(record: CloseRecord) -> None:
    """Write the access line on ``trio_tls_dtls.access`` (if it is enabled for INFO)."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    fields = access_fields(record)
    text = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
    _access_logger.info("closed %s", text, extra={"conn": fields})


class CloseCounts(Protocol):
    """The close counters of a server's stats (TLSServerStats, DTLSServerStats)."""

    bytes_in: int
    bytes_out: int
    closed_by_reason: Counter[str]


def count_close(counts: CloseCounts, record: CloseRecord) -> None:
    """Add a record's bytes and reason to *counts*."""
    counts.bytes_in += record.bytes_in
    counts.bytes_out += record.bytes_out
    counts.closed_by_reason[record.reason] += 1


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return f'"{text}"' if " " in text else text
