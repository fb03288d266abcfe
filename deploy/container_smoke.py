"""Build the image with podman and talk to the running container with openssl.

``nox -s container-smoke`` (or ``python deploy/container_smoke.py`` as root,
from the repository root) runs it; it is not in the default sessions: it
needs podman, runc and debootstrap (Debian packages) and a few minutes.

No registry but PyPI is reachable where we build, so the Dockerfile's
``python:3.11-slim-bookworm`` cannot be pulled. The stand-in base is made
here instead: ``debootstrap`` a minimal Debian bookworm with python3 and
python3-venv, with this machine's CA bundle (pip in the build reaches PyPI
through whatever this machine trusts), imported as
``localhost/trio-tlsd-base:bookworm`` and passed as ``--build-arg
PYTHON_IMAGE``. Made once and reused; ``--rebuild-base`` makes it again.

The container then runs as the Kubernetes manifests run it: as the image's
user, read-only root filesystem, every capability dropped, no new
privileges, the certificate and key mounted read-only, on 127.0.0.1 only
(host network: the sandbox has no other). The checks:

* ``openssl s_client`` echoes a line over TLS, and over DTLS (``-dtls1_2``);
* the server inside runs as uid 10001;
* the metrics listener answers the HEALTHCHECK's own command (Python's
  urllib, the image has no curl) on ``/metrics``;
* ``podman stop`` (SIGTERM, the image's STOPSIGNAL) drains: exit status 0,
  and the log says ``drained``.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/trio-tlsd-base:bookworm"
IMAGE = "localhost/trio-tlsd:smoke"
NAME = "trio-tlsd-smoke"
# What a root shell inside a container sandbox needs: vfs storage (no
# overlay mounts), cgroupfs (no systemd), runc (crun refuses hybrid cgroups),
# and explicit rlimits (raising them is not allowed). All harmless elsewhere.
PODMAN = ["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]
RUN_QUIRKS = ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
STEP_TIMEOUT = 20.0


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def podman(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run(*PODMAN, *args, **kw)


def have_image(name: str) -> bool:
    result = subprocess.run([*PODMAN, "image", "exists", name], check=False)
    return result.returncode == 0


def make_base() -> None:
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-base-") as folder:
        rootfs = Path(folder) / "rootfs"
        run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python-is-python3,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
            stdout=subprocess.DEVNULL,
        )
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
        pip_conf = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        (rootfs / "etc/pip.conf").write_text(pip_conf)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE, stdin=tar.stdout)
        if tar.wait() != 0:
            raise SystemExit("tar of the base failed")


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port")


def wait_for_tcp(port: int) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {STEP_TIMEOUT}s")


def s_client_echo(port: int, ca: Path, *, dtls: bool) -> None:
    """One line through ``openssl s_client``: sent, echoed, then a clean close."""
    args = ["openssl", "s_client", "-quiet", "-no_ign_eof", "-verify_return_error"]
    args += ["-CAfile", str(ca), "-servername", "localhost"]
    args += ["-connect", f"127.0.0.1:{port}"] + (["-dtls1_2"] if dtls else [])
    print("+", " ".join(args), flush=True)
    client = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert client.stdin is not None
    assert client.stdout is not None
    line = b"smoke test over %s\n" % (b"DTLS" if dtls else b"TLS")
    client.stdin.write(line)
    client.stdin.flush()
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(client.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + STEP_TIMEOUT
        while line not in seen and time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                chunk = os.read(client.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
    client.stdin.close()
    try:
        status = client.wait(STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        client.kill()
        status = client.wait()
    errors = client.stderr.read().decode() if client.stderr else ""
    if line not in seen or status != 0:
        raise SystemExit(f"no echo over {'DTLS' if dtls else 'TLS'} (exit {status}): {errors}")
    print(f"echo over {'DTLS' if dtls else 'TLS'}: ok", flush=True)


def smoke(workdir: Path) -> None:
    pki = workdir / "pki"
    run(sys.executable, "-m", "trio_tls_dtls", "certs", "--dir", str(pki), cwd=ROOT)
    pki.chmod(0o755)  # readable by the container's user (uid 10001): test files only
    (pki / "server.key").chmod(0o644)
    port, metrics = free_port(), free_port()
    subprocess.run([*PODMAN, "rm", "-f", NAME], check=False, capture_output=True)
    podman(
        "run", "--detach", "--name", NAME, *RUN_QUIRKS,
        "--network", "host", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--no-healthcheck",
        "--volume", f"{pki}:/etc/trio-tlsd/tls:ro",
        IMAGE,
        "serve", "--host", "127.0.0.1", "--port", str(port),
        "--cert", "/etc/trio-tlsd/tls/server.pem", "--key", "/etc/trio-tlsd/tls/server.key",
        "--metrics-port", str(metrics), "--metrics-host", "127.0.0.1", "--drain-timeout", "5",
    )  # fmt: skip
    try:
        wait_for_tcp(port)
        s_client_echo(port, pki / "ca.pem", dtls=False)
        s_client_echo(port, pki / "ca.pem", dtls=True)
        uid = podman("exec", NAME, "python", "-c", "import os; print(os.getuid())",
                     capture_output=True).stdout.strip()  # fmt: skip
        if uid != "10001":
            raise SystemExit(f"the server runs as uid {uid}, not 10001")
        probe = (
            "import urllib.request; "
            f"urllib.request.urlopen('http://127.0.0.1:{metrics}/metrics', timeout=2)"
        )
        podman("exec", NAME, "python", "-c", probe)
        podman("stop", "--time", "20", NAME)
        status = podman("inspect", NAME, "--format", "{{.State.ExitCode}}", capture_output=True)
        log = podman("logs", NAME, capture_output=True)
        print(log.stderr, end="", flush=True)
        if status.stdout.strip() != "0" or "drained" not in log.stderr:
            raise SystemExit(f"podman stop: exit status {status.stdout.strip()}, no drain")
        print("container smoke test: ok", flush=True)
    finally:
        subprocess.run([*PODMAN, "rm", "-f", NAME], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base again")
    args = parser.parse_args()
    tools = ("podman", "runc", "debootstrap", "openssl")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        print(f"container-smoke needs {', '.join(missing)} (apt-get install ...)", file=sys.stderr)
        return 2
    if args.rebuild_base or not have_image(BASE):
        make_base()
    podman(
        "build", "--format", "docker", "--network", "host", "--isolation", "chroot",
        "--build-arg", f"PYTHON_IMAGE={BASE}", "--tag", IMAGE, str(ROOT),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="trio-tlsd-smoke-") as folder:
        smoke(Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
