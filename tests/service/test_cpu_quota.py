"""``--workers auto``: the affinity mask and the cgroup v2 quota, from the files' text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import CLI, EMPTY_DIR
from tests.conftest import PKIFiles
from trio_tls_dtls.service.cpu_quota import (
    CpuMax,
    candidate_files,
    cgroup_v2_path,
    decide_workers,
    parse_cpu_max,
    read_cpu_limits,
    usable_cpus,
)
from trio_tls_dtls.service.workers import worker_count

# /proc/self/cgroup of a container on a cgroup v2 node (Kubernetes, containerd).
POD_CGROUP = (
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
    "cri-containerd-abcd.scope"
)


@pytest.mark.parametrize(
    ("text", "quota", "period", "cpus"),
    [
        ("max 100000\n", None, 100_000, None),
        ("200000 100000\n", 200_000, 100_000, 2),
        ("150000 100000", 150_000, 100_000, 2),  # 1.5 CPUs: rounded up
        ("50000 100000", 50_000, 100_000, 1),  # half a CPU: still one worker
        ("100000 100000", 100_000, 100_000, 1),
        ("400000", 400_000, 100_000, 4),  # the period defaults to the kernel's
        ("1000 1000000", 1000, 1_000_000, 1),
    ],
)
def test_parse_cpu_max(text: str, quota: int | None, period: int, cpus: int | None) -> None:
    limit = parse_cpu_max(text)
    assert (limit.quota, limit.period, limit.cpus) == (quota, period, cpus)


@pytest.mark.parametrize("text", ["", "max max", "0 100000", "100 0", "-1 100000", "1 2 3", "x"])
def test_parse_cpu_max_refuses_what_the_kernel_never_writes(text: str) -> None:
    with pytest.raises(ValueError, match=r"/sys/x/cpu\.max"):
        parse_cpu_max(text, "/sys/x/cpu.max")


def test_cgroup_v2_path() -> None:
    assert cgroup_v2_path("0::/\n") == "/"  # a container with its own cgroup namespace
    assert cgroup_v2_path(f"0::{POD_CGROUP}\n") == POD_CGROUP
    hybrid = "4:memory:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/session-1.scope\n"
    assert cgroup_v2_path(hybrid) == "/user.slice/session-1.scope"
    assert cgroup_v2_path("4:memory:/\n3:cpu,cpuacct:/\n") is None  # cgroup v1 only
    assert cgroup_v2_path("0::/../../system.slice\n") is None  # outside our namespace
    assert cgroup_v2_path("") is None


def test_candidate_files_walk_up_to_the_root() -> None:
    root = Path("/sys/fs/cgroup")
    assert candidate_files("/", root) == [root / "cpu.max"]
    assert candidate_files("/a.slice/b.scope", root) == [
        root / "a.slice/b.scope/cpu.max",
        root / "a.slice/cpu.max",
        root / "cpu.max",
    ]


def test_decide_workers() -> None:
    two = CpuMax(200_000, 100_000, "/sys/fs/cgroup/cpu.max")
    decision = decide_workers(64, [two])
    assert decision.count == 2
    assert decision.reason == (
        "cgroup cpu.max 200000/100000 in /sys/fs/cgroup/cpu.max; 64 CPUs in affinity"
    )
    # The affinity mask is the smaller limit.
    decision = decide_workers(1, [CpuMax(800_000, 100_000)])
    assert decision.count == 1
    assert decision.reason.startswith("1 CPU in affinity; cgroup cpu.max 800000/100000")
    # No quota anywhere.
    decision = decide_workers(8, [CpuMax(None, 100_000)])
    assert (decision.count, decision.reason) == (8, "8 CPUs in affinity; no cgroup cpu.max quota")
    assert decide_workers(3, []).reason == "3 CPUs in affinity; no cgroup cpu.max quota"
    # The tightest of the cgroup and its ancestors wins.
    parent = CpuMax(100_000, 100_000, "parent/cpu.max")
    assert decide_workers(64, [two, CpuMax(None, 100_000), parent]).count == 1
    assert "parent/cpu.max" in decide_workers(64, [two, parent]).reason
    assert decide_workers(0, []).count == 1  # never zero workers


def _cgroup_tree(tmp_path: Path, own: str | None, parent: str | None) -> tuple[Path, Path]:
    """A fake /proc/self/cgroup and /sys/fs/cgroup holding the given cpu.max texts."""
    proc = tmp_path / "cgroup"
    proc.write_text("0::/pod.slice/ctr.scope\n")
    root = tmp_path / "sys-fs-cgroup"
    (root / "pod.slice/ctr.scope").mkdir(parents=True)
    if own is not None:
        (root / "pod.slice/ctr.scope/cpu.max").write_text(own)
    if parent is not None:
        (root / "pod.slice/cpu.max").write_text(parent)
    return proc, root


def test_read_cpu_limits_from_files(tmp_path: Path) -> None:
    proc, root = _cgroup_tree(tmp_path, "max 100000\n", "300000 100000\n")
    limits = read_cpu_limits(proc, root)
    assert [(x.quota, x.where) for x in limits] == [
        (None, str(root / "pod.slice/ctr.scope/cpu.max")),
        (300_000, str(root / "pod.slice/cpu.max")),
    ]  # and the root's cpu.max, which does not exist, is skipped
    decision = usable_cpus(proc, root)
    affinity = len(os.sched_getaffinity(0))
    assert decision.count == min(3, affinity)
    assert "pod.slice/cpu.max" in decision.reason


def test_unreadable_or_odd_files_are_no_limit(tmp_path: Path) -> None:
    proc, root = _cgroup_tree(tmp_path, "garbage\n", None)
    assert read_cpu_limits(proc, root) == []
    assert read_cpu_limits(tmp_path / "missing", root) == []
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(proc, root).count == affinity


def test_worker_count_auto_is_the_usable_cpus(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    decision = usable_cpus()
    assert worker_count("auto") == decision.count
    assert f"workers auto: {decision.count} ({decision.reason})" in caplog.text


async def test_serve_workers_auto_follows_the_affinity_mask(pki: PKIFiles) -> None:
    """The real CLI, pinned to one CPU as ``taskset -c 0`` would: one worker, and it says why."""
    flags = ["--host", "127.0.0.1", "--port", "0", "--tls-only"]
    flags += ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    process = await trio.lowlevel.open_process(
        [*CLI, "serve", "--workers", "auto", *flags],
        cwd=EMPTY_DIR,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(20):
            while b"trio-tlsd: serving" not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        # One CPU: the single-process path (no "starting N workers").
        log = output.decode()
        assert re.search(r"workers auto: 1 \(.*1 CPU in affinity", log), log
        assert "starting" not in log
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
