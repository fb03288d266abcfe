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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
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

RELAY = Path(__file__).resolve().parents[1] / "relay.py"
REPO = Path(__file__).resolve().parents[2]
HANDSHAKE_TIMEOUT = 6.0
"""Per client. OpenSSL retransmits after 1 s, 2 s, 4 s: this leaves room for two or three tries."""
CLIENTS = 4
MESSAGES = 10
DUP = 0.1
REORDER = 0.25
DELAY_MS = "0,3"
READY_TIMEOUT = 30.0
"""How long a relay or server process may take to print its address."""


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
        stdout = process.stdout
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT)
        if reader.is_alive():
            process.kill()  # its stdout closes, so the reader ends too
            raise RuntimeError(f"{command[:6]} printed nothing within {READY_TIMEOUT:g}s")
        line = lines[0].strip()
        if not line:
            process.wait(timeout=10)
            raise RuntimeError(f"{command[:6]} exited ({process.returncode}) before it was ready")
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
            # Nothing is lost at 0 %: wait as long as a busy machine may need.
            echo_wait=5.0 if loss == 0 else 1.0,
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


# -- the same through network namespaces -------------------------------------------


@dataclass(frozen=True)
class Namespaces:
    """Three namespaces: server <-veth-> relay <-veth-> clients. Nothing in the host's own."""

    server: str
    relay: str
    client: str
    server_ip: str = "10.201.1.2"
    relay_server_side: str = "10.201.1.1"
    relay_client_side: str = "10.201.2.1"
    client_ip: str = "10.201.2.2"


def _ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *arguments], capture_output=True, text=True, timeout=30, check=check
    )


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"ttd-probe-{uuid.uuid4().hex[:8]}"
    try:
        added = _ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            return f"`ip netns add` failed: {added.stderr.strip()}"
        ran = _ip("netns", "exec", probe, "true", check=False)
        if ran.returncode != 0:
            return f"`ip netns exec` failed: {ran.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"needs root and iproute2 (ip netns): {reason}")
    token = uuid.uuid4().hex[:6]
    names = Namespaces(f"ttd-{token}-srv", f"ttd-{token}-relay", f"ttd-{token}-cli")
    links = [f"t{token}s0", f"t{token}s1", f"t{token}c0", f"t{token}c1"]
    created: list[str] = []
    try:
        for name in (names.server, names.relay, names.client):
            _ip("netns", "add", name)
            created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        # Each veth pair is made directly inside its two namespaces.
        _ip("link", "add", links[0], "netns", names.server,
            "type", "veth", "peer", "name", links[1], "netns", names.relay)  # fmt: skip
        _ip("link", "add", links[2], "netns", names.client,
            "type", "veth", "peer", "name", links[3], "netns", names.relay)  # fmt: skip
        for ns, link, address in (
            (names.server, links[0], names.server_ip),
            (names.relay, links[1], names.relay_server_side),
            (names.client, links[2], names.client_ip),
            (names.relay, links[3], names.relay_client_side),
        ):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", ns, "link", "set", link, "up")
        yield names
    finally:
        for name in created:  # deleting a namespace deletes the veth ends inside it
            _ip("netns", "del", name, check=False)
        left = _ip("netns", "list").stdout
        assert not any(name in left for name in created), f"namespaces left behind: {left}"
        root_links = _ip("-o", "link").stdout
        assert not any(link in root_links for link in links), "veths left in the host namespace"


@pytest.fixture
def netns_processes(namespaces: Namespaces) -> Iterator[ProcessGroup]:
    """Like ``processes``, but ended before the namespaces are deleted."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.close()


def _in_ns(ns: str, *arguments: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.lossy_peer", *arguments]


def _netns_server(
    pki: PKIFiles, names: Namespaces, group: ProcessGroup
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    command = _in_ns(
        names.server, "server", "--host", names.server_ip,
        "--cert", str(pki.server_cert), "--key", str(pki.server_key),
    )  # fmt: skip
    server, line = group.start(command)
    return server, json.loads(line)


def _netns_client(names: Namespaces, *arguments: str) -> dict[str, object]:
    done = subprocess.run(
        _in_ns(names.client, *arguments),
        capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcome: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


# Synchronous: every step is a subprocess with its own timeout.
@pytest.mark.parametrize("loss", [0.0, 0.20], ids=["loss0-reorder", "loss20-reorder"])
def test_dtls_through_relay_between_namespaces(
    pki: PKIFiles, namespaces: Namespaces, netns_processes: ProcessGroup, loss: float
) -> None:
    seed = 2000 + int(loss * 100)
    _, ports = _netns_server(pki, namespaces, netns_processes)
    relay = netns_processes.relay(
        *relay_arguments(
            f"{namespaces.relay_client_side}:0",
            f"{namespaces.server_ip}:{ports['dtls']}",
            loss=loss,
            reorder=True,
            seed=seed,
        ),
        ip_netns=namespaces.relay,
    )
    outcome = _netns_client(
        namespaces, "dtls", "--target", relay.address, "--ca", str(pki.ca),
        "--clients", str(CLIENTS), "--messages", str(MESSAGES),
        "--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--seed", str(seed),
        "--echo-wait", "5" if loss == 0 else "1",
    )  # fmt: skip
    counters = relay.stop()
    result = DTLSCellResult(**outcome)  # type: ignore[arg-type]
    check_cell(result, loss, f"netns: loss {loss:.0%} reorder on")
    print(f"relay counters {counters}")
    assert counters["reordered"] > 0
    if loss:
        assert counters["dropped"] > 0


def test_tls_through_splitting_relay_between_namespaces(
    pki: PKIFiles, namespaces: Namespaces, netns_processes: ProcessGroup
) -> None:
    _, ports = _netns_server(pki, namespaces, netns_processes)
    relay = netns_processes.relay(
        "--listen", f"{namespaces.relay_client_side}:0",
        "--target", f"{namespaces.server_ip}:{ports['tls']}",
        "--tcp", "--split", "--max-chunk", "2048", "--delay-ms", "0,1", "--seed", "6",
        ip_netns=namespaces.relay,
    )  # fmt: skip
    outcome = _netns_client(namespaces, "tls", "--target", relay.address, "--ca", str(pki.ca))
    counters = relay.stop()
    assert outcome == {"sent": 1 << 20, "received": 1 << 20, "identical": True}
    assert counters["split"] > 100


# -- the relay itself ----------------------------------------------------------------


def _udp_echo_through_relay(
    processes: ProcessGroup, *options: str, count: int = 200
) -> tuple[list[int], dict[str, int]]:
    """Send *count* numbered datagrams through a relay to a UDP echo; return what came back."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def serve() -> None:
        echo.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                data, peer = echo.recvfrom(2048)
                echo.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        relay = processes.relay(
            "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo.getsockname()[1]}",
            "--udp", *options,
        )  # fmt: skip
        client.settimeout(1.0)
        for number in range(count):
            client.sendto(b"%d" % number, (relay.host, relay.port))
            time.sleep(0.001)  # paced: no socket buffer on the way may overflow
        got: list[int] = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(int(client.recv(2048)))
        return got, relay.stop()
    finally:
        stop.set()
        thread.join(5)
        echo.close()
        client.close()


def test_relay_without_reordering_keeps_order(processes: ProcessGroup) -> None:
    got, counters = _udp_echo_through_relay(processes, "--delay-ms", "0,3", "--seed", "3")
    assert got == list(range(200))
    assert counters == {
        "forwarded": 400, "dropped": 0, "duplicated": 0, "reordered": 0, "split": 0,
    }  # fmt: skip


def test_relay_drops_duplicates_and_reorders(processes: ProcessGroup) -> None:
    got, counters = _udp_echo_through_relay(
        processes, "--loss", "0.2", "--dup", "0.2", "--reorder", "0.3", "--seed", "4"
    )
    assert counters["dropped"] > 0 and counters["duplicated"] > 0 and counters["reordered"] > 0
    assert len(got) > len(set(got))  # the relay itself does duplicate
    assert got != sorted(got)  # and reorder
    assert len(set(got)) < 200  # and lose
    assert set(got) <= set(range(200))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--listen", "nowhere", "--target", "127.0.0.1:1", "--udp"], "not HOST:PORT: 'nowhere'"),
        (["--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--udp", "--loss", "2"],
         "between 0 and 1"),
        (["--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--tcp", "--delay-ms", "5"],
         "LO,HI"),
    ],
)  # fmt: skip
def test_relay_rejects_bad_options(arguments: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(RELAY), *arguments], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr
