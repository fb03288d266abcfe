"""The per-connection record: one log line when a TLS connection or DTLS peer ends.

Logged on ``trio_tls_dtls.access`` (route it apart from the rest if you
like) as ``closed peer=… transport=… protocol=… cipher=… client_cert=…
resumed=… bytes_in=… bytes_out=… duration_ms=… reason=…``, then
``handshake_error=…`` when the handshake failed and ``psk_identity=…`` when a
pre-shared key authenticated it (fields are only ever added at the end); the
same fields travel as ``record.conn`` (a dict) for the JSON log format.

Reasons: ``peer_closed`` (the peer's close_notify), ``handler_done`` (our
handler returned first), ``idle_timeout``, ``handshake_timeout``,
``handshake_failed`` (with ``handshake_error``), ``broken`` (the transport
failed or the peer vanished without close_notify), ``drained`` (a graceful
shutdown), ``proxy_untrusted`` (a PROXY protocol listener refused a peer
not in ``proxy_trusted``), ``proxy_header`` (its PROXY header was bad, late
or cut short), ``removed`` (a DTLS peer replaced by a new handshake from its
address, or evicted from a full table), ``error`` (the handler raised),
``cancelled`` (a hard stop).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.peer_info import Address, PeerInfo, format_address
from ..core.source_limits import LogThrottle, Refusal

__all__ = ["HANDSHAKE_BUCKETS", "LatencyHistogram", "account_close", "log_close", "log_refusal"]

logger = logging.getLogger(__name__)

access_logger = logging.getLogger("trio_tls_dtls.access")

# Seconds: loopback handshakes take ~1-5 ms, across the internet 50-500 ms.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Counts per upper bound (cumulative form is made when exported), sum and count."""

    bounds: tuple[float, ...] = HANDSHAKE_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(HANDSHAKE_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def log_close(
    *,
    address: Address | None,
    transport: str,
    info: PeerInfo | None,
    bytes_in: int,
    bytes_out: int,
    duration: float,
    reason: str,
    handshake_error: str | None = None,
) -> None:
    """Emit the close record (if the access logger is enabled for INFO)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "peer": format_address(address),
        "transport": transport,
        "protocol": info.protocol if info else None,
        "cipher": info.cipher if info else None,
        "client_cert": info.subject if info else None,
        "resumed": info.resumed if info else None,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(duration * 1000, 1),
        "reason": reason,
    }
    if handshake_error:
        fields["handshake_error"] = handshake_error
    if info is not None and info.psk_identity is not None:
        fields["psk_identity"] = info.psk_identity
    text = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
    access_logger.info("closed %s", text, extra={"conn": fields})


class _CloseStats(Protocol):
    bytes_in: int
    bytes_out: int
    closed_by_reason: Counter[str]


class _Counted(Protocol):
    @property
    def bytes_received(self) -> int: ...

    @property
    def bytes_sent(self) -> int: ...


def account_close(
    stats: _CloseStats,
    conn: _Counted,
    *,
    address: Address,
    transport: str,
    info: PeerInfo | None,
    duration: float,
    reason: str,
    handshake_error: str | None,
) -> None:
    """Add a closed TLS connection's or DTLS peer's bytes and reason to *stats*, and log it."""
    stats.bytes_in += conn.bytes_received
    stats.bytes_out += conn.bytes_sent
    stats.closed_by_reason[reason] += 1
    log_close(
        address=address,
        transport=transport,
        info=info,
        bytes_in=conn.bytes_received,
        bytes_out=conn.bytes_sent,
        duration=duration,
        reason=reason,
        handshake_error=handshake_error,
    )


def log_refusal(
    throttle: LogThrottle, now: float, address: Address, why: Refusal, what: str
) -> None:
    """Log a per-source refusal of a new *what* (connection, peer), a line a second at most."""
    held = throttle.ready(now)
    if held is None:
        return
    limit = "handshake rate" if why == "rate" else f"concurrent {what}s"
    logger.warning(
        "refused a %s from %s: over its per-source %s limit (%d more refusals not logged)",
        what,
        format_address(address),
        limit,
        held,
    )


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return f'"{text}"' if " " in text else text
