"""A very small HTTP/1.0 server for the operator's endpoints (metrics, health, readiness).

It runs on the service's own Trio loop, so an answer proves that loop
turns. It reads one request per connection (up to the blank line,
:data:`MAX_REQUEST` bytes or :data:`REQUEST_TIMEOUT` seconds, whichever
comes first), answers it, and closes: scrapers and probes need no more,
and nothing a client sends can hold memory or a task for long.

Routes map a path to a function of the :class:`Request` that returns a
:class:`Response`; the query string is ignored for routing. ``GET`` and
``HEAD`` are answered (``HEAD`` with the headers ``GET`` would send, and no
body), any other method with ``405`` and ``Allow``, an unknown path with
``404`` naming the known ones. A route that raises would end
``serve_listeners`` and with it everything in its nursery (the service):
routes must not raise, and a client that goes away mid-request is not an
error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

from ..drivers.listeners import open_tcp_listeners

__all__ = ["MAX_REQUEST", "REQUEST_TIMEOUT", "Request", "Response", "Route", "serve_http"]

# An HTTP request we answer is one short line and a few headers.
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Request:
    """What a route is given: the method, the path and query, the headers (lower-case names)."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """A status, a body and its type; *headers* are extra ``(name, value)`` pairs."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[Request], Response]


async def serve_http(
    routes: Mapping[str, Route],
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer *routes* on *host*:*port* until cancelled; ``task_status`` gets the bound port."""
    listeners = await open_tcp_listeners(port, host)
    bound = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        handler = partial(_answer, dict(routes))
        await nursery.start(partial(trio.serve_listeners, handler, listeners))
        task_status.started(bound)


def parse_request(data: bytes) -> Request | None:
    """The request line and headers of *data*; None if there is no request line."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    if len(parts) < 2:
        return None
    method = parts[0].decode("ascii", "replace")
    target = parts[1].decode("ascii", "replace")
    path, _, query = target.partition("?")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("ascii", "replace")] = value.strip().decode(
                "latin-1"
            )
    return Request(method, path, query, headers)


def respond(routes: Mapping[str, Route], request: Request | None) -> Response:
    """The response to *request* (None: a request without a request line)."""
    if request is None:
        return Response(400, b"bad request\n")
    if request.method not in _METHODS:
        return Response(405, b"GET or HEAD only\n", headers=(("Allow", ", ".join(_METHODS)),))
    route = routes.get(request.path)
    if route is None:
        known = ", ".join(sorted(routes))
        return Response(404, f"not found; try {known}\n".encode())
    return route(request)


async def _answer(routes: Mapping[str, Route], stream: trio.SocketStream) -> None:
    async with stream:
        try:
            data = await _read_request(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client reset the connection. A handler's exception would end
            # serve_listeners and with it the whole service: nobody to answer.
            return
        request = parse_request(data)
        response = respond(routes, request)
        head_only = request is not None and request.method == "HEAD"
        await _reply(stream, response, head_only=head_only)


async def _read_request(stream: trio.SocketStream) -> bytes:
    """Up to the blank line, MAX_REQUEST bytes or REQUEST_TIMEOUT, whichever comes first."""
    request = b""
    with trio.move_on_after(REQUEST_TIMEOUT):
        while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
            chunk = await stream.receive_some(MAX_REQUEST)
            if not chunk:
                break
            request += chunk
    return request


def render(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes on the wire: status line, headers, and the body unless *head_only*."""
    reason = _REASONS.get(response.status, "Unknown")
    lines = [
        f"HTTP/1.0 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",  # HEAD: the length GET would send
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


async def _reply(stream: trio.SocketStream, response: Response, *, head_only: bool) -> None:
    with (
        trio.move_on_after(REQUEST_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(render(response, head_only=head_only))
