"""Liveness and readiness of a :class:`~trio_tls_dtls.service.service.Service` over HTTP.

Two answers, for probes (Kubernetes, a load balancer's HTTP health check,
the container's ``HEALTHCHECK``) that should not have to open a TLS
connection, which would be logged as a handshake and, behind the PROXY
protocol, refused:

``/healthz`` (liveness)
    ``200 ok`` whenever it is answered at all. The answer comes from the
    service's own Trio loop, so a loop that is stuck (a blocking call, a
    busy loop) shows as a probe that times out, and the process is worth
    restarting. It stays 200 while the service drains.

``/readyz`` (readiness)
    ``200 ready`` when the listeners are bound and serving (so their
    certificates are loaded: a service is built with them, and a failed
    reload keeps them) and no stop has been asked for.
    Otherwise ``503`` and one line saying why (``not ready: stopping:
    SIGTERM received``). On the first SIGTERM it turns 503 at once, while
    the listeners go on accepting for ``drain_delay`` seconds
    (:mod:`trio_tls_dtls.service.drain`), so that a balancer that probes
    it stops sending new clients before the listeners close.

Both are served on the metrics listener (:func:`~.metrics.serve_metrics`)
and, with no metrics, on their own (:func:`serve_health`): the same tiny
HTTP server (:mod:`.http_endpoint`), ``GET`` and ``HEAD``.
"""

from __future__ import annotations

import trio

from .http_endpoint import Request, Response, Route, serve_http
from .service import Service

__all__ = ["health_routes", "readiness", "serve_health"]


def readiness(service: Service) -> str | None:
    """None if *service* is ready for new clients, else one line saying why not."""
    if service.stopping is not None:
        return f"not ready: {service.stopping}"
    if not service.addresses:
        return "not ready: listeners not bound"
    if not service.serving:
        return "not ready: listeners not serving"
    # Certificates need no check of their own: a Service cannot exist
    # without its contexts (building them reads and checks every file), and
    # a reload that fails keeps the ones in use.
    return None


def health_routes(service: Service) -> dict[str, Route]:
    """``/healthz`` and ``/readyz`` for *service*, to add to an HTTP listener's routes."""

    def healthz(request: Request) -> Response:
        return Response(200, b"ok\n")

    def readyz(request: Request) -> Response:
        why = readiness(service)
        if why is None:
            return Response(200, b"ready\n")
        return Response(503, why.encode("utf-8", "replace") + b"\n")

    return {"/healthz": healthz, "/readyz": readyz}


async def serve_health(
    service: Service,
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``/healthz`` and ``/readyz`` on *host*:*port* until cancelled.

    ``await nursery.start(serve_health, service, 0)`` returns the port.
    """
    await serve_http(health_routes(service), port, host=host, task_status=task_status)
