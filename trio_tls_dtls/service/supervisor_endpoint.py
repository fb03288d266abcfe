"""The one metrics and health endpoint of ``--workers``, served by the supervisor.

Why the supervisor, and why threads
-----------------------------------
A scraper should have one target per service, whatever the number of
workers (one per CPU). So the supervisor binds ``--metrics-port P`` before
it forks, and answers it for all of them; each worker slot *k* serves its
own ``/metrics``, ``/healthz`` and ``/readyz`` on a private loopback
listener that the supervisor also opened before forking
(:mod:`.worker_sockets`), handed from each worker to its successor like the
slot's TLS and DTLS sockets. On each request the supervisor asks every
slot, at once, within :data:`SLOT_TIMEOUT`:

* ``/metrics``: the slots' expositions added up (:mod:`.metrics_merge`;
  counters stay monotonic across restarts and reloads), plus what only the
  supervisor knows: ``trio_tlsd_worker_restarts_total``,
  ``trio_tlsd_workers`` and ``trio_tlsd_workers_scraped`` (slots that
  answered: fewer means the totals miss a worker), and ``build_info``;
* ``/readyz``: 200 when every slot is ready, else 503 naming each slot
  that is not (from the first SIGTERM on, the supervisor's own "stopping");
* ``/healthz``: 200 when every slot's event loop answers, else 503.

A slot whose worker is being replaced does not fail the endpoint: its
listener's queue holds the request for the successor, or the slot is left
out of the sum for that scrape after :data:`SLOT_TIMEOUT`.

The supervisor runs no event loop (it waits for signals and children), so
the endpoint runs in a few threads: one accepting per listening socket, a
small pool answering. They hold no lock a forked worker could inherit held:
they neither print nor log while serving, and the worker closes the
endpoint's sockets first thing. A fork copies every descriptor, the
connections being answered included: so an answer ends with ``shutdown()``
(the end of the stream reaches the client even while a new worker still
holds a copy), and the worker closes its copies of those too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..core.peer_info import format_address
from .exposition import PID_HEADER, BuildInfo, exposition_response
from .http_endpoint import MAX_REQUEST, REQUEST_TIMEOUT, Response, parse_request, render
from .http_endpoint import respond as route
from .metrics_merge import Retired, merge, parse
from .worker_sockets import SlotSockets, open_metrics_endpoint

__all__ = [
    "SLOT_TIMEOUT",
    "SlotAnswer",
    "SupervisorEndpoint",
    "ask_slot",
    "open_with_endpoint",
]

logger = logging.getLogger(__name__)

SLOT_TIMEOUT = 2.0
# A worker's whole answer, not each read: a slot that trickles bytes (or
# sends without end) is cut, like one that does not answer.
MAX_SLOT_ANSWER = 16 * 2**20
"""Seconds a slot has to answer one of the supervisor's requests."""
_ACCEPT_POLL = 0.25  # how soon an accepting thread sees stop()
_ANSWERING_THREADS = 4
PREFIX = "trio_tlsd_"


@dataclass(frozen=True)
class SlotAnswer:
    """A slot's answer: its status (0: none in time), body, and the worker's process ID."""

    status: int
    body: bytes = b""
    pid: int = 0


def ask_slot(address: tuple[str, int], path: str, timeout: float = SLOT_TIMEOUT) -> SlotAnswer:
    """``GET path`` from a worker slot's private endpoint; status 0 if no answer in time."""
    try:
        deadline = time.monotonic() + timeout
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode("ascii"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                left = deadline - time.monotonic()
                if left <= 0 or len(data) > MAX_SLOT_ANSWER:
                    return SlotAnswer(0)
                sock.settimeout(left)
    except OSError:
        return SlotAnswer(0)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return SlotAnswer(0)
    pid = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == PID_HEADER.lower().encode():
            with contextlib.suppress(ValueError):
                pid = int(value)
    return SlotAnswer(status, body, pid)


class SupervisorEndpoint:
    """``/metrics``, ``/healthz``, ``/readyz`` for all slots on *listeners* (see the module doc).

    *slots* are the private addresses of the worker slots, by index;
    *restarts* reads the supervisor's restart count. :meth:`start` once
    the slots' sockets are open, :meth:`stop` when the workers have stopped.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        slots: Sequence[tuple[str, int]],
        restarts: Callable[[], int],
    ) -> None:
        self.listeners = list(listeners)
        self.slots = list(slots)
        self.stopping: str | None = None
        """Set at the first stop request: /readyz then fails with it."""
        self._restarts = restarts
        self._retired = Retired()
        self._retired_lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(_ANSWERING_THREADS, thread_name_prefix="metrics")
        self._threads: list[threading.Thread] = []
        self._answering: set[socket.socket] = set()  # to close in a forked worker
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self))
        registry.register(BuildInfo())
        self._routes = {
            "/metrics": lambda request: exposition_response(registry, request),
            "/healthz": lambda request: self._probe("/healthz", None),
            "/readyz": lambda request: self._probe("/readyz", self.stopping),
        }

    @property
    def port(self) -> int:
        return int(self.listeners[0].getsockname()[1])

    def start(self) -> None:
        # Every thread here, and those they start, blocks every signal: the
        # supervisor takes its signals with sigtimedwait in its main thread,
        # and a SIGTERM or SIGHUP the kernel gave to one of these threads
        # would take its default action instead (the end of the supervisor).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            for sock in self.listeners:
                sock.settimeout(_ACCEPT_POLL)
                thread = threading.Thread(
                    target=self._accept_loop, args=(sock,), name="metrics-accept", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def stop(self) -> None:
        """Stop accepting, finish the answers in flight, close the listeners."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True)
        self.close()

    def close(self) -> None:
        """Close this process's copies of the listeners and of the connections being answered.

        A forked worker does this first thing. No lock: the threads that
        use these sets do not exist in the child.
        """
        for sock in [*self.listeners, *self._answering]:
            sock.close()

    # -- serving -------------------------------------------------------------------

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.wait(_ACCEPT_POLL):  # out of descriptors, say: let some close
                    return
                continue
            self._pool.submit(self._answer, conn)

    def _answer(self, conn: socket.socket) -> None:
        self._answering.add(conn)
        try:
            self._answer_on(conn)
        finally:
            self._answering.discard(conn)
            conn.close()

    def _answer_on(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(REQUEST_TIMEOUT)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                chunk = conn.recv(MAX_REQUEST)
                if not chunk:
                    break
                data += chunk
            request = parse_request(data)
            response = route(self._routes, request)
            head_only = request is not None and request.method == "HEAD"
            conn.sendall(render(response, head_only=head_only))
            conn.shutdown(socket.SHUT_RDWR)  # the end, even if a forked worker holds a copy

    def _ask_all(self, path: str) -> list[SlotAnswer]:
        # Its own threads: the answering pool may be busy with this very request.
        with ThreadPoolExecutor(len(self.slots), thread_name_prefix="metrics-slot") as pool:
            return list(pool.map(lambda address: ask_slot(address, path), self.slots))

    def _probe(self, path: str, stopping: str | None) -> Response:
        answers = self._ask_all(path)
        lines = []
        for index, answer in enumerate(answers):
            if answer.status != 200:
                why = answer.body.decode("utf-8", "replace").strip() or "no answer"
                lines.append(f"worker {index}: {why}")
        if stopping is not None:
            lines.insert(0, f"not ready: {stopping}")
        if lines:
            return Response(503, ("\n".join(lines) + "\n").encode())
        word = "ready" if path == "/readyz" else "ok"
        return Response(200, f"{word}: {len(answers)} workers\n".encode())

    def scrape(self) -> list[Metric]:
        """Every slot's metrics added up, and the supervisor's own."""
        answers = self._ask_all("/metrics")
        expositions = []
        with self._retired_lock:
            for index, answer in enumerate(answers):
                if answer.status != 200:
                    continue
                try:
                    scraped = parse(answer.body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    continue
                expositions.append(self._retired.carry(index, answer.pid, scraped))
        restarts = CounterMetricFamily(
            PREFIX + "worker_restarts",
            "Workers restarted by the supervisor after an unexpected exit",
            value=self._restarts(),
        )
        workers = GaugeMetricFamily(
            PREFIX + "workers", "Worker slots the supervisor runs", value=len(self.slots)
        )
        scraped_count = GaugeMetricFamily(
            PREFIX + "workers_scraped",
            "Worker slots that answered this scrape in time (fewer: the totals miss some)",
            value=len(expositions),
        )
        return [*merge(expositions), restarts, workers, scraped_count]


class _Merged(Collector):
    def __init__(self, endpoint: SupervisorEndpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> list[Metric]:
        return self.endpoint.scrape()


def open_with_endpoint(
    port: int | None,
    host: str,
    open_slots: Callable[..., list[SlotSockets]],
    *,
    restarts: Callable[[], int],
) -> tuple[list[SlotSockets], SupervisorEndpoint | None]:
    """The slots' sockets from *open_slots*, and the endpoint on *host*:*port* if *port*.

    The endpoint's port is bound first; if the slots' cannot be, it is
    closed again (a ListenError then names the port at fault).
    """
    if port is None:
        return open_slots(private_metrics=False), None
    listeners = open_metrics_endpoint(port, host)
    try:
        slots = open_slots(private_metrics=True)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    private = [slot.metrics[0].getsockname()[:2] for slot in slots]
    endpoint = SupervisorEndpoint(listeners, private, restarts)
    logger.info(
        "metrics of all %d workers at http://%s/metrics, health at /healthz and /readyz",
        len(slots),
        format_address(listeners[0].getsockname()),
    )
    return slots, endpoint
