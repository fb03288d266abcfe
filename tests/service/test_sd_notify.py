"""systemd ``Type=notify``: the datagrams, read from a socket the test owns.

The end-to-end tests run the real ``trio-tlsd serve`` with ``NOTIFY_SOCKET``
pointing at that socket, and ask the kernel who sent each message
(SO_PASSCRED), as systemd does for ``NotifyAccess=main``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import CLI, EMPTY_DIR
from tests.conftest import PKIFiles
from tests.service.test_workers import REPO, free_port
from trio_tls_dtls import open_dtls_channel, open_tls_stream
from trio_tls_dtls.service import sd_notify
from trio_tls_dtls.service.sd_notify import Notifier, notify_address
from trio_tls_dtls.service.supervisor_notify import NotifyRelay

pytestmark = pytest.mark.timeout(90)


@dataclass
class Message:
    fields: dict[str, str]
    pid: int  # the sender, as the kernel tells it

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


def _parse(data: bytes) -> dict[str, str]:
    fields = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


class NotifyListener:
    """The systemd side: a datagram socket that learns each sender's pid."""

    def __init__(self, address: str) -> None:
        self.env_value = address  # what NOTIFY_SOCKET says
        self.raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.raw.bind(notify_address(address))
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock: trio.socket.SocketType | None = None  # made in Trio, on first use
        self.seen: list[Message] = []

    async def receive(self) -> Message:
        if self._sock is None:
            self._sock = trio.socket.from_stdlib_socket(self.raw)
        data, ancillary, _, _ = await self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("3i", payload[:12])[0]
        message = Message(_parse(data), pid)
        self.seen.append(message)
        return message

    async def until(self, key: str, value: str | None = None) -> Message:
        """The next message with *key* (equal to *value* if given), within 15 s."""
        with trio.fail_after(15):
            while True:
                message = await self.receive()
                if key in message.fields and value in (None, message[key]):
                    return message

    def close(self) -> None:
        (self._sock or self.raw).close()


@contextmanager
def listener(abstract: bool) -> Iterator[NotifyListener]:
    if abstract:
        made = NotifyListener(f"@trio-tlsd-test-{uuid.uuid4().hex}")
        try:
            yield made
        finally:
            made.close()
        return
    # A short folder: a socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        made = NotifyListener(f"{folder}/notify")
        try:
            yield made
        finally:
            made.close()


# -- the protocol pieces ------------------------------------------------------------


def test_notify_address() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract") == "\0abstract"
    for bad in ("relative/path", "@", "vsock:2:1234", ""):
        with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
            notify_address(bad)


def test_without_notify_socket_nothing_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier.from_environment({}).enabled
    assert Notifier.from_environment({}).send("READY=1") is False
    caplog.set_level(logging.WARNING)
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "notify"}).enabled
    assert "sd_notify off: NOTIFY_SOCKET='notify'" in caplog.text


@pytest.mark.parametrize("abstract", [False, True])
def test_one_datagram_per_message(abstract: bool) -> None:
    with listener(abstract) as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env_value})
        assert notifier.send("READY=1", "STATUS=up")
        assert notifier.send("STOPPING=1")
        raw = systemd.raw  # no Trio loop here
        raw.setblocking(True)
        assert raw.recv(4096) == b"READY=1\nSTATUS=up"
        assert raw.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_a_send_that_fails_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.send("STATUS=x") is False
    assert caplog.text.count("sd_notify: could not send READY=1") == 1
    notifier.close()


def test_reloading_and_stopping_messages() -> None:
    with listener(abstract=True) as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env_value})
        before = time.monotonic_ns() // 1000
        with sd_notify.reloading(notifier):
            pass
        after = time.monotonic_ns() // 1000
        sd_notify.stopping(3, notifier)
        raw = systemd.raw
        raw.setblocking(True)
        reloading = _parse(raw.recv(4096))
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        assert _parse(raw.recv(4096)) == {"READY": "1"}
        assert _parse(raw.recv(4096)) == {
            "STOPPING": "1",
            "STATUS": "draining: 3 open",
            "X_OPEN": "3",
        }
        notifier.close()


class _FakeService:
    def __init__(self) -> None:
        self.open = 0

    def describe(self) -> str:
        return "TLS on tcp 127.0.0.1:1"

    def open_count(self) -> int:
        return self.open


async def test_announce_never_waits_and_retries_ready_when_the_queue_is_full() -> None:
    """A receiver that does not read (a busy supervisor): READY=1 is retried, not lost."""
    with listener(abstract=True) as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env_value})
        filler = 0
        while notifier.send(f"X_FILL={filler}", wait=0):  # fill the queue
            filler += 1
        assert filler >= 1
        service = _FakeService()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sd_notify.announce, service, notifier)
            await trio.sleep(0.2)  # announce has found the queue full a few times
            for _ in range(filler):  # now read: room again
                assert "X_FILL" in (await systemd.receive()).fields
            ready = await systemd.receive()
            assert ready.fields == {
                "READY": "1",
                "STATUS": "serving TLS on tcp 127.0.0.1:1: 0 open",
                "X_OPEN": "0",
            }
            service.open = 5
            assert (await systemd.until("X_OPEN", "5"))["STATUS"].endswith(": 5 open")
            nursery.cancel_scope.cancel()
        notifier.close()


def test_relay_waits_for_every_worker_of_a_generation() -> None:
    """The supervisor's relay, fed as its workers would feed it."""
    with listener(abstract=True) as systemd:
        raw = systemd.raw
        raw.setblocking(False)
        relay = NotifyRelay(Notifier.from_environment({"NOTIFY_SOCKET": systemd.env_value}))
        outbox = relay._outbox  # the workers' end
        assert outbox is not None

        def worker_says(pid: int, *fields: str) -> None:
            outbox.send("\n".join((*fields, f"X_WORKER_PID={pid}")).encode())

        def upstream() -> list[dict[str, str]]:
            got = []
            while True:
                try:
                    got.append(_parse(raw.recv(4096)))
                except BlockingIOError:
                    return got

        assert relay.waiting
        worker_says(11, "READY=1", "X_OPEN=0")
        relay.poll(live={11, 12}, current={11, 12}, count=2)
        assert not any("READY" in m for m in upstream())  # one of two is not ready
        worker_says(99, "READY=1")  # not a live worker: ignored
        relay.poll(live={11, 12}, current={11, 12}, count=2)
        assert not any("READY" in m for m in upstream())
        worker_says(12, "READY=1", "X_OPEN=2")
        relay.poll(live={11, 12}, current={11, 12}, count=2)
        assert upstream() == [{"READY": "1", "STATUS": "2 of 2 workers serving: 2 open"}]
        assert not relay.waiting

        # A reload: RELOADING=1 now, READY=1 once the new generation serves.
        relay.reloading()
        (reloading,) = upstream()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        worker_says(21, "READY=1")
        worker_says(22, "READY=1")
        worker_says(11, "STOPPING=1", "X_OPEN=1")  # the old generation drains
        relay.poll(live={11, 12, 21, 22}, current={21, 22}, count=2)
        assert upstream() == [{"READY": "1", "STATUS": "2 of 2 workers serving: 3 open"}]
        relay.poll(live={21, 22}, current={21, 22}, count=2)  # the old ones are gone
        assert upstream() == [{"STATUS": "2 of 2 workers serving: 0 open"}]

        # A reload whose files are bad: the running workers stay, READY=1 at once.
        relay.reloading()
        relay.reload_failed()
        assert [m.get("READY") or m.get("RELOADING") for m in upstream()] == ["1", "1"]
        assert not relay.waiting

        relay.stopping()
        relay.poll(live={21, 22}, current={21, 22}, count=2)
        assert upstream() == [{"STOPPING": "1"}, {"STATUS": "draining 2 workers: 0 open"}]
        relay.close()
        relay.upstream.close()


# -- the real trio-tlsd serve ----------------------------------------------------------


@asynccontextmanager
async def serve_notified(
    systemd: NotifyListener, tmp_path: Path, *flags: str
) -> AsyncIterator[trio.Process]:
    """``trio-tlsd serve`` with NOTIFY_SOCKET set; killed on the way out if still running."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, NOTIFY_SOCKET=systemd.env_value, PYTHONPATH=path)
    with (tmp_path / "stderr.log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            [*CLI, "serve", "--host", "127.0.0.1", *flags],
            cwd=EMPTY_DIR,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            for child in _children_of(process.pid):
                os.kill(child, signal.SIGKILL)
            process.kill()
            await process.wait()


def _children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _listening_tcp_sockets(port: int) -> int:
    """How many TCP sockets listen on 127.0.0.1:*port* (one per worker with SO_REUSEPORT)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and local == f"0100007F:{port:04X}":
            count += 1
    return count


@pytest.mark.parametrize("abstract", [False, True])
async def test_serve_tells_systemd_ready_reloading_status_stopping(
    pki: PKIFiles, tmp_path: Path, abstract: bool
) -> None:
    flags = ["--port", "0", "--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    with listener(abstract) as systemd:
        async with serve_notified(systemd, tmp_path, *flags) as process:
            ready = await systemd.until("READY")
            assert ready.pid == process.pid
            # READY=1 comes when both ports are bound and served: connect at once.
            status = ready["STATUS"]
            port = int(re.search(r"tcp 127\.0\.0\.1:(\d+)", status).group(1))  # type: ignore[union-attr]
            assert f"udp 127.0.0.1:{port}" in status and status.endswith(": 0 open")
            assert ready["X_OPEN"] == "0"
            dtls = await open_dtls_channel("127.0.0.1", port, settings=pki.client_settings())
            await dtls.send(b"ping")
            assert await dtls.receive() == b"ping"
            stream = await open_tls_stream("127.0.0.1", port, settings=pki.client_settings())
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            # STATUS= follows the open count.
            changed = await systemd.until("X_OPEN", "2")
            assert changed["STATUS"].endswith(": 2 open")

            before = time.monotonic_ns() // 1000
            process.send_signal(signal.SIGHUP)
            reloading = await systemd.until("RELOADING")
            assert before <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
            assert (await systemd.until("READY")).pid == process.pid

            process.send_signal(signal.SIGTERM)
            stopping = await systemd.until("STOPPING")
            assert stopping["STATUS"] == "draining: 2 open"
            await dtls.aclose()
            await stream.aclose()
            with trio.fail_after(15):
                await process.wait()
            assert process.returncode == 0, (tmp_path / "stderr.log").read_text()
        assert {m.pid for m in systemd.seen} == {process.pid}


async def test_with_workers_only_the_supervisor_notifies(pki: PKIFiles, tmp_path: Path) -> None:
    port = free_port()
    flags = ["--port", str(port), "--workers", "2", "--tls-only"]
    flags += ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    with listener(abstract=False) as systemd:
        async with serve_notified(systemd, tmp_path, *flags) as process:
            ready = await systemd.until("READY")
            # Both workers are bound: READY waited for the second one too.
            assert _listening_tcp_sockets(port) == 2
            assert ready["STATUS"] == "2 of 2 workers serving: 0 open"
            first = set(_children_of(process.pid))
            assert len(first) == 2

            process.send_signal(signal.SIGHUP)
            await systemd.until("RELOADING")
            await systemd.until("READY")
            # READY=1 after a reload means the new generation serves.
            assert len(set(_children_of(process.pid)) - first) == 2

            process.send_signal(signal.SIGTERM)
            await systemd.until("STOPPING")
            with trio.fail_after(20):
                await process.wait()
            assert process.returncode == 0, (tmp_path / "stderr.log").read_text()
        # NotifyAccess=main: every message came from the supervisor, none from a worker.
        assert {m.pid for m in systemd.seen} == {process.pid}
        assert [m.get("READY") for m in systemd.seen].count("1") == 2  # start, reload
