"""The supervisor's scrape of a worker slot is bounded in time and size, not per read."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from trio_tls_dtls.service import supervisor_endpoint
from trio_tls_dtls.service.supervisor_endpoint import ask_slot


def _slot(send: bytes, pause: float, times: int) -> tuple[tuple[str, int], threading.Thread]:
    """A fake worker slot: answers with *send* every *pause* seconds, *times* times."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                try:
                    for _ in range(times):
                        conn.sendall(send)
                        time.sleep(pause)
                except OSError:  # the scraper gave up and closed
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[:2], thread


def test_a_normal_answer_is_read() -> None:
    address, thread = _slot(b"HTTP/1.0 200 OK\r\n\r\nup 1\n", 0.0, 1)
    answer = ask_slot(address, "/metrics", timeout=2.0)
    thread.join(5)
    assert answer.status == 200


def test_a_trickling_slot_is_cut_at_the_timeout() -> None:
    # One byte every 0.1 s for 5 s: each read is quick, the answer never ends.
    address, thread = _slot(b"H", 0.1, 50)
    started = time.monotonic()
    answer = ask_slot(address, "/metrics", timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert answer.status == 0
    thread.join(10)


def test_an_endless_slot_is_cut_at_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_endpoint, "MAX_SLOT_ANSWER", 1000)
    address, thread = _slot(b"x" * 600, 0.0, 100)
    answer = ask_slot(address, "/metrics", timeout=5.0)
    assert answer.status == 0
    thread.join(10)
