"""DTLS and TLS through a lossy relay process (tests/relay.py), across a loss x reorder grid.

The relay is a subprocess between the clients and the server; it drops,
duplicates, delays and reorders datagrams (UDP) or splits writes (TCP),
from a seeded generator. In every cell each DTLS handshake must either
complete or fail with our HandshakeError within its deadline; every echo
that arrives must be intact and arrive once. What fraction completes is
printed (``pytest -s``), and is only asserted at 0 % loss (all of it).

The network-namespace variant runs the same through two namespaces joined
by veth pairs to a third, where the relay runs; it needs root and iproute2
and is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_dtls_server, running_tls_server
from tests.lossy_peer import (
    DTLSCellResult,
    RecordingHandler,
    dtls_clients,
    tls_roundtrip,
)

RELAY = Path(__file__).with_name("relay.py")
REPO = Path(__file__).resolve().parent.parent
HANDSHAKE_TIMEOUT = 6.0
"""Per client. OpenSSL retransmits after 1 s, 2 s, 4 s: this leaves room for two or three tries."""
CLIENTS = 4
MESSAGES = 10
DUP = 0.1
REORDER = 0.25
DELAY_MS = "0,3"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class RelayProcess:
    process: subprocess.Popen[str]
    address: str
    counters: dict[str, int] | None = None

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def stop(self) -> dict[str, int]:
        """SIGTERM by PID; the relay prints its counters and exits 0."""
        if self.counters is None:
            self.process.send_signal(signal.SIGTERM)
            out, _ = self.process.communicate(timeout=10)
            assert self.process.returncode == 0, out
            [line] = [x for x in out.splitlines() if x.startswith("counters ")]
            self.counters = json.loads(line.removeprefix("counters "))
        return self.counters


class ProcessGroup:
    """Processes a test started, each ended by its own PID at teardown."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, command: list[str], *, cwd: Path = REPO) -> tuple[subprocess.Popen[str], str]:
        """Start *command*; return it and the first line it prints (its address or ports)."""
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env(), cwd=cwd)
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # bounded: the test's deadline covers it
        if not line:
            process.wait(timeout=10)
            raise RuntimeError(f"{command[:4]} exited ({process.returncode}) before it was ready")
        return process, line

    def relay(self, *arguments: str, ip_netns: str | None = None) -> RelayProcess:
        prefix = ["ip", "netns", "exec", ip_netns] if ip_netns else []
        process, address = self.start([*prefix, sys.executable, str(RELAY), *arguments])
        return RelayProcess(process, address)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=10)


@pytest.fixture
def processes() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.close()


def relay_arguments(
    listen: str, target: str, *, loss: float, reorder: bool, seed: int
) -> list[str]:
    return [
        "--listen", listen, "--target", target, "--udp",
        "--loss", str(loss), "--dup", str(DUP), "--reorder", str(REORDER if reorder else 0.0),
        "--delay-ms", DELAY_MS, "--seed", str(seed),
    ]  # fmt: skip


def check_cell(result: DTLSCellResult, loss: float, label: str) -> None:
    print(
        f"\n{label}: {result.completed}/{result.clients} handshakes "
        f"({result.fraction:.0%}), {result.echoed}/{result.sent} echoes, "
        f"failures {result.failures}"
    )
    assert result.unexpected == [], "handshakes and echoes must succeed or fail cleanly"
    assert set(result.failures) <= {"timeout"}, result.failures
    assert result.completed + len(result.failures) == result.clients
    assert result.damaged == 0
    assert result.duplicates == 0, "an echo reached the application twice"
    assert result.foreign == 0
    assert result.sent == result.completed * MESSAGES
    if loss == 0:
        assert result.completed == result.clients
        assert result.echoed == result.sent


GRID = [
    pytest.param(loss, reorder, id=f"loss{int(loss * 100)}-{'reorder' if reorder else 'inorder'}")
    for loss in (0.0, 0.05, 0.20, 0.40)
    for reorder in (False, True)
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("loss", "reorder"), GRID)
async def test_dtls_through_lossy_relay(
    pki: PKIFiles, processes: ProcessGroup, loss: float, reorder: bool
) -> None:
    seed = 1000 + int(loss * 100) * 2 + reorder
    handler = RecordingHandler()
    server_settings = pki.server_settings(handshake_timeout=HANDSHAKE_TIMEOUT * 2)
    async with running_dtls_server(server_settings, handler) as server:
        relay = await trio.to_thread.run_sync(
            lambda: processes.relay(
                *relay_arguments(
                    "127.0.0.1:0",
                    f"127.0.0.1:{port_of(server)}",
                    loss=loss,
                    reorder=reorder,
                    seed=seed,
                )
            ),
            abandon_on_cancel=True,
        )
        result = await dtls_clients(
            relay.host,
            relay.port,
            pki.client_settings(handshake_timeout=HANDSHAKE_TIMEOUT),
            clients=CLIENTS,
            messages=MESSAGES,
            seed=seed,
        )
    counters = relay.stop()
    check_cell(result, loss, f"loss {loss:.0%} reorder {'on' if reorder else 'off'}")
    print(f"relay counters {counters}")
    # The server's application saw every message at most once, intact.
    assert handler.duplicates == 0 and handler.damaged == 0
    assert len(handler.received) >= result.echoed
    assert counters["forwarded"] > 0
    if loss:
        assert counters["dropped"] > 0
    if loss == 0:  # enough datagrams that some were surely duplicated
        assert counters["duplicated"] > 0
    assert (counters["reordered"] > 0) == reorder


@pytest.mark.timeout(90)
async def test_tls_through_splitting_relay_loses_nothing(
    pki: PKIFiles, processes: ProcessGroup
) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        arguments = [
            "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port_of(server)}",
            "--tcp", "--split", "--max-chunk", "2048", "--delay-ms", "0,1", "--seed", "5",
        ]  # fmt: skip
        relay = await trio.to_thread.run_sync(
            lambda: processes.relay(*arguments), abandon_on_cancel=True
        )
        result = await tls_roundtrip(
            relay.host, relay.port, pki.client_settings(), server_hostname="localhost"
        )
    counters = relay.stop()
    assert result.received == result.sent == 1 << 20
    assert result.identical
    assert counters["split"] > 100  # the records really were cut up on the way
