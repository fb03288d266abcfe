"""trio-tlsd bench against real loopback servers, small: shapes and counts, never timings."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import PKIFiles
from trio_tls_dtls.cli.bench.report import percentile
from trio_tls_dtls.cli.main import main
from trio_tls_dtls.core.settings import ServerSettings
from trio_tls_dtls.service.service import Service

CLI = [sys.executable, "-m", "trio_tls_dtls"]
SMALL = ["--clients", "4", "--count", "5", "--sizes", "64,1000"]


# -- servers in a background thread, each in its own Trio run -----------------------


async def _plain_echo(kind: str, task_status: trio.TaskStatus[int]) -> None:
    if kind == "tcp":

        async def echo(stream: trio.SocketStream) -> None:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, echo, listeners)
            task_status.started(listeners[0].socket.getsockname()[1])
        return
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    task_status.started(sock.getsockname()[1])
    while True:
        data, address = await sock.recvfrom(65536)
        await sock.sendto(data, address)


async def _ours(settings: ServerSettings, task_status: trio.TaskStatus[int]) -> None:
    service = Service(settings)
    await service.bind(0, "127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        task_status.started(service.port)


@contextmanager
def server_thread(start: Callable[..., Any], *args: Any) -> Iterator[int]:
    """Run ``start(*args, task_status=...)`` in a thread; yield its port; cancel on exit."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def run() -> None:
        with trio.CancelScope() as scope:
            state["scope"], state["token"] = scope, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                state["port"] = await nursery.start(start, *args)
                ready.set()

    def target() -> None:
        try:
            trio.run(run)
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state["port"]
    finally:
        trio.from_thread.run_sync(state["scope"].cancel, trio_token=state["token"])
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture
def ours(pki: PKIFiles) -> Iterator[int]:
    with server_thread(_ours, pki.server_settings()) as port:
        yield port


def run_bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- every protocol and mode -------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "mode"),
    [
        ("tls", "handshake"),
        ("tls", "echo"),
        ("tls", "bulk"),
        ("dtls", "handshake"),
        ("dtls", "echo"),
    ],
)
def test_bench_our_server(
    pki: PKIFiles,
    ours: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    proto: str,
    mode: str,
) -> None:
    out_json = tmp_path / "out.json"
    code, out, err = run_bench(
        capsys,
        f"127.0.0.1:{ours}",
        "--proto",
        proto,
        "--mode",
        mode,
        *SMALL,
        "--ca",
        str(pki.ca),
        "--servername",
        "localhost",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    data = json.loads(out_json.read_text())
    check_shape(data, proto, mode, clients=4, count=5)
    rate = "handshakes/s" if mode == "handshake" else "round trips/s"
    assert rate in out
    assert "\r" not in err  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize(
    ("proto", "mode"), [("tcp", "handshake"), ("tcp", "echo"), ("tcp", "bulk"), ("udp", "echo")]
)
def test_bench_plain_ceilings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proto: str, mode: str
) -> None:
    out_json = tmp_path / "out.json"
    with server_thread(_plain_echo, proto) as port:
        code, _, err = run_bench(
            capsys,
            f"127.0.0.1:{port}",
            "--proto",
            proto,
            "--mode",
            mode,
            *SMALL,
            "--json",
            str(out_json),
        )
    assert code == 0, err
    check_shape(json.loads(out_json.read_text()), proto, mode, clients=4, count=5)


def check_shape(data: dict[str, Any], proto: str, mode: str, *, clients: int, count: int) -> None:
    assert set(data) == {"config", "machine", "rate_unit", "results"}
    assert data["config"]["proto"] == proto
    assert data["config"]["mode"] == mode
    assert data["machine"]["cores"] >= 1
    sizes = [0] if mode == "handshake" else [64, 1000]
    assert [r["size"] for r in data["results"]] == sizes
    for r in data["results"]:
        assert r["ops"] == clients * count, r
        assert r["errors"] == 0, r["error_kinds"]
        assert r["ops_per_s"] > 0
        lat = r["latency_us"]
        assert set(lat) == {"p50", "p90", "p99", "max", "mean"}
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        if mode == "handshake":
            assert r["mb_per_s"] == 0
            # Without --resume every handshake is a full one (no session cache).
            assert r["resumed"] == 0
        else:
            assert r["mb_per_s"] > 0


@pytest.mark.parametrize("proto", ["tls", "dtls"])
def test_resumed_handshakes(
    pki: PKIFiles, ours: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], proto: str
) -> None:
    out_json = tmp_path / "r.json"
    code, out, err = run_bench(
        capsys,
        f"127.0.0.1:{ours}",
        "--proto",
        proto,
        "--mode",
        "handshake",
        "--resume",
        *SMALL,
        "--ca",
        str(pki.ca),
        "--json",
        str(out_json),
    )
    assert code == 0, err
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["ops"] == 20
    assert result["resumed"] == 20
    assert "resumed: 20 of 20" in out


def test_mutual_tls(pki: PKIFiles, capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread(_ours, pki.mtls_server_settings()) as port:
        target = f"127.0.0.1:{port}"
        code, out, err = run_bench(
            capsys,
            target,
            "--mode",
            "handshake",
            "--mtls",
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
            "--ca",
            str(pki.ca),
            *SMALL,
        )
        assert code == 0, err
        assert "tls mTLS handshake" in out
        # Without a client certificate the server refuses: one clear line.
        code, _, err = run_bench(capsys, target, "--mode", "handshake", "--ca", str(pki.ca))
        assert code == 2
        assert err.strip().count("\n") == 0
        assert "the server ended the connection" in err
        assert "certificate required" in err


def test_duration_and_several_processes(
    pki: PKIFiles, ours: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "p.json"
    code, _, err = run_bench(
        capsys,
        f"127.0.0.1:{ours}",
        "--proto",
        "tls",
        "--mode",
        "echo",
        "--clients",
        "4",
        "--procs",
        "2",
        "--duration",
        "0.5",
        "--sizes",
        "64,1000",
        "--ca",
        str(pki.ca),
        "--json",
        str(out_json),
    )
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert data["config"]["procs"] == 2
    for r in data["results"]:
        assert r["ops"] > 0
        assert r["errors"] == 0
        # Two processes' phases are merged into one wall-clock span.
        assert r["seconds"] >= 0.5


def test_several_processes_with_a_count(
    pki: PKIFiles, ours: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_json = tmp_path / "c.json"
    code, _, err = run_bench(
        capsys,
        f"127.0.0.1:{ours}",
        "--proto",
        "dtls",
        "--mode",
        "echo",
        "--clients",
        "3",
        "--count",
        "4",
        "--procs",
        "2",
        "--sizes",
        "64",
        "--ca",
        str(pki.ca),
        "--json",
        str(out_json),
    )
    assert code == 0, err
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["ops"] == 12  # 2 clients in one process, 1 in the other


# -- DTLS sizes and failed runs (issue 14 item 7) ---------------------------------------------


def bench_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, Any]:
    out_json = tmp_path / "out.json"
    code, _, err = run_bench(capsys, *args, "--json", str(out_json))
    assert code == 0, err
    return code, json.loads(out_json.read_text())


def test_dtls_default_sizes_fit_a_datagram(
    pki: PKIFiles, ours: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --sizes: the defaults must be sizes a DTLS record can carry at the MTU.
    _, data = bench_json(
        capsys,
        tmp_path,
        f"127.0.0.1:{ours}",
        "--proto",
        "dtls",
        "--clients",
        "2",
        "--count",
        "3",
        "--ca",
        str(pki.ca),
        "--servername",
        "localhost",
    )
    sizes = [r["size"] for r in data["results"]]
    assert sizes and max(sizes) < 1200, sizes
    for r in data["results"]:
        assert r["ops"] == 6, r
        assert r["errors"] == 0, r["error_kinds"]


def dtls_limit_refusal(capsys: pytest.CaptureFixture[str], ca: Path, port: int, size: int) -> str:
    code, out, err = run_bench(
        capsys,
        f"127.0.0.1:{port}",
        "--proto",
        "dtls",
        "--sizes",
        f"64,{size}",
        "--ca",
        str(ca),
        "--servername",
        "localhost",
    )
    assert code == 2, (out, err)
    assert out == ""  # refused before any load
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_dtls_size_over_the_record_limit_is_refused_naming_it(
    pki: PKIFiles, ours: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = dtls_limit_refusal(capsys, pki.ca, ours, 1200)
    assert "--sizes 1200" in line
    assert "MTU 1200" in line
    match = re.search(r"at most (\d+) bytes", line)
    assert match, line
    limit = int(match.group(1))
    # The named limit is the real one: it echoes without a single error ...
    _, data = bench_json(
        capsys,
        tmp_path,
        f"127.0.0.1:{ours}",
        "--proto",
        "dtls",
        "--clients",
        "2",
        "--count",
        "3",
        "--sizes",
        str(limit),
        "--ca",
        str(pki.ca),
        "--servername",
        "localhost",
    )
    (result,) = data["results"]
    assert (result["ops"], result["errors"]) == (6, 0), result["error_kinds"]
    # ... and one byte more is refused.
    assert f"at most {limit} bytes" in dtls_limit_refusal(capsys, pki.ca, ours, limit + 1)


async def _small_datagram_echo(limit: int, task_status: trio.TaskStatus[int]) -> None:
    """A UDP echo that ignores datagrams over *limit* bytes (as a smaller MTU would)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    task_status.started(sock.getsockname()[1])
    while True:
        data, address = await sock.recvfrom(65536)
        if len(data) <= limit:
            await sock.sendto(data, address)


def test_a_run_with_failed_operations_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread(_small_datagram_echo, 100) as port:
        code, out, err = run_bench(
            capsys,
            f"127.0.0.1:{port}",
            "--proto",
            "udp",
            "--clients",
            "2",
            "--count",
            "2",
            "--sizes",
            "64,1000",
            "--timeout",
            "0.2",
        )
    assert code == 1, (out, err)
    assert "4 x timeout" in out  # the 1000-byte row: every echo lost
    assert err.strip().splitlines() == [
        "trio-tlsd bench: 4 of 8 operations failed (see the errors in the table)"
    ]


# -- errors are one line -------------------------------------------------------------------


def assert_one_line_error(args: list[str], *fragments: str) -> None:
    result = subprocess.run(
        [*CLI, "bench", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_tls() -> None:
    port = free_port(socket.SOCK_STREAM)
    assert_one_line_error([f"127.0.0.1:{port}", "--proto", "tls"], "connection refused")


def test_nothing_listening_udp() -> None:
    port = free_port(socket.SOCK_DGRAM)
    assert_one_line_error(
        [f"127.0.0.1:{port}", "--proto", "udp", "--timeout", "2"], f"udp 127.0.0.1:{port}"
    )


def test_wrong_certificate(pki: PKIFiles, other_pki: PKIFiles, ours: int) -> None:
    assert_one_line_error(
        [f"127.0.0.1:{ours}", "--proto", "dtls", "--ca", str(other_pki.ca)],
        "DTLS handshake with 127.0.0.1",
        "certificate verify failed",
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--proto", "udp", "--mode", "handshake"], "UDP has no handshake"),
        (["--proto", "dtls", "--mode", "bulk"], "--mode bulk needs a stream"),
        (["--mode", "echo", "--resume"], "--resume applies to"),
        (["--mtls"], "--mtls needs --cert and --key"),
        (["--sizes", "64,abc"], "expected sizes"),
        (["--clients", "0"], "positive integer"),
        (["--clients", "2", "--procs", "3"], "more than --clients"),
        (["--count", "5", "--duration", "1"], "not allowed with"),
    ],
)
def test_bad_flags(args: list[str], fragment: str) -> None:
    assert_one_line_error(["127.0.0.1:9", *args], fragment)


def test_plot_without_matplotlib_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code, out, err = run_bench(capsys, "127.0.0.1:9", "--plot", str(tmp_path / "p.png"))
    assert code == 2
    assert out == ""  # refused before any load
    assert err.strip().splitlines() == [
        "trio-tlsd: error: --plot needs matplotlib: pip install 'trio-tls-dtls[plot]' "
        "(or: pip install matplotlib)"
    ]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7], 0.9) == 7
    assert percentile([], 0.5) == 0
