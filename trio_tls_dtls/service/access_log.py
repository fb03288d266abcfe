"""The service's access log: where the close records of both servers go.

The drivers emit one :class:`~trio_tls_dtls.core.close_record.CloseRecord`
per TLS connection or DTLS peer when it ends (and per TLS connection refused
before its handshake); they neither log it nor count it. :class:`AccessLog`
is the sink the service gives both its servers. For each record it

* counts it into the stats of the server that emitted it
  (``closed_by_reason``, ``bytes_in``, ``bytes_out``: what
  :mod:`.metrics` exports as ``trio_tlsd_closed_total`` and
  ``trio_tlsd_bytes_*_total``), and
* writes the access line on ``trio_tls_dtls.access``
  (:func:`~trio_tls_dtls.core.close_record.log_close`; its format is the
  documented contract in docs/reference/metrics.rst).

A server run without the service (``serve_tls``, ``serve_dtls``) does the
same by default, so the stats count each close exactly once either way: a
server counts only through its sink.
"""

from __future__ import annotations

from ..core.close_record import CloseCounts, CloseRecord, count_close, log_close

__all__ = ["AccessLog"]


class AccessLog:
    """A close sink for several servers: counts each record, logs its access line."""

    def __init__(self) -> None:
        self.counts: dict[str, CloseCounts] = {}
        """Where the closes of each transport (``tls``, ``dtls``) are counted."""

    def __call__(self, record: CloseRecord) -> None:
        counts = self.counts.get(record.transport)
        if counts is not None:
            count_close(counts, record)
        log_close(record)
