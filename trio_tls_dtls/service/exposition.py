"""How a metrics registry goes on the wire, and the series every process states about itself.

One answer for ``GET /metrics`` wherever it is served (a single process,
or the supervisor of ``--workers`` for all of them):

* the format is chosen by ``prometheus_client.exposition.choose_encoder``
  from the ``Accept`` header: OpenMetrics when the scraper asks for it
  (Prometheus does), the classic text format otherwise;
* the body is gzipped when ``Accept-Encoding`` names gzip (as Prometheus
  sends): the text shrinks several times over, and it is made once per scrape.

:class:`BuildInfo` is ``trio_tlsd_build_info{version, python, openssl} 1``:
which code serves, and on which OpenSSL (pyOpenSSL's, from the
``cryptography`` wheel, not the system's).
"""

from __future__ import annotations

import gzip
import os
import platform
from collections.abc import Iterator

from OpenSSL import SSL
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from .http_endpoint import Request, Response

__all__ = ["PID_HEADER", "BuildInfo", "exposition_response", "openssl_version"]

PREFIX = "trio_tlsd_"
PID_HEADER = "X-Worker-Pid"
"""Names the process that made a ``/metrics`` answer (the supervisor of
``--workers`` tells a restarted worker from its predecessor by it)."""
# Below this, gzip's header and the CPU cost more than the bytes saved.
_GZIP_MIN = 512


def openssl_version() -> str:
    """The OpenSSL pyOpenSSL runs on, e.g. ``OpenSSL 3.5.0 8 Apr 2025``."""
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")


class BuildInfo(Collector):
    """``trio_tlsd_build_info``: always 1, the facts are in the labels."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "Always 1: the trio-tls-dtls version, the Python and the OpenSSL in use",
            labels=["version", "python", "openssl"],
        )
        info.add_metric([__version__, platform.python_version(), openssl_version()], 1)
        yield info


def exposition_response(registry: CollectorRegistry, request: Request) -> Response:
    """*registry* in the format *request* accepts, gzipped if it accepts that."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encoder(registry)
    headers: tuple[tuple[str, str], ...] = (
        ("Vary", "Accept, Accept-Encoding"),
        (PID_HEADER, str(os.getpid())),
    )
    if _accepts_gzip(request.headers.get("accept-encoding", "")) and len(body) >= _GZIP_MIN:
        body = gzip.compress(body, compresslevel=6)
        headers += (("Content-Encoding", "gzip"),)
    return Response(200, body, content_type, headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    """``gzip`` listed without ``q=0`` (RFC 9110 12.5.3)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() != "gzip":
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False
