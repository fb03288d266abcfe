"""Who the benchmark suite measures, and how each one is started, pinned and probed.

A *peer* is a column of the suite's table: ours, trio, asyncio, uvloop, Go,
plain trio TCP/UDP, and the OpenSSL floors. Each peer has a server *kind*
per transport (``None``: it cannot do that transport, shown as "n/a"); a
kind is one process, started by :class:`Server`:

* the Python servers of ``benchmarks/servers.py``;
* ``go``: the Go crypto/tls echo server of ``benchmarks/go``, built with
  ``go build`` into the run's temporary folder (never into the tree), or
  skipped with one line when ``go`` is not on PATH or the build fails;
* ``floor``, ``floor-stdlib``, ``floor-x25519``: ``benchmarks/floor.py``,
  which does the work itself, in memory, and reports its own CPU time.

Every server process runs under ``taskset`` on one CPU and the load client
(this process and its children) on another, so the two never share a core;
with one CPU, or without ``taskset``, the suite says so in one line and runs
unpinned. :func:`probe` makes one connection as the load client would and
reads what was negotiated (protocol, cipher, key-exchange group): the
libraries differ (pyOpenSSL's bundled OpenSSL 4.0 offers the hybrid
X25519MLKEM768 group, the system's OpenSSL 3.0 under stdlib ``ssl`` and Go
1.19 do not), and that difference belongs in the table beside the numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from trio_tls_dtls import ClientSettings, DTLSEngine, TLSEngine

# Not part of the public API: the probe uses the load client's own context.
from trio_tls_dtls.core.contexts import build_client_context

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers.py"
FLOOR = HERE / "floor.py"
GO_SOURCE = HERE / "go"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FLOOR_KINDS = ("floor", "floor-stdlib", "floor-x25519")


@dataclass(frozen=True)
class Peer:
    """One column of the table."""

    key: str
    label: str
    tls: str | None
    dtls: str | None
    python: bool = False  # a candidate for "the best Python peer"
    handshakes: bool = True  # plain TCP/UDP have none
    records: bool = True  # floor-x25519 differs from floor in the key exchange only
    memory: bool = True

    def kind(self, proto: str) -> str | None:
        return self.tls if proto == "tls" else self.dtls


PEERS = (
    Peer("ours", "ours", "ours-tls", "ours-dtls"),
    Peer("trio", "trio SSLStream / DTLSEndpoint", "trio-tls", "trio-dtls", python=True),
    Peer("asyncio", "asyncio (stdlib ssl)", "asyncio", None, python=True),
    Peer("uvloop", "asyncio + uvloop", "uvloop", None, python=True),
    Peer("go", "Go crypto/tls", "go", None),
    Peer("plain", "plain trio TCP / UDP", "tcp", "udp", handshakes=False),
    Peer("floor", "floor: OpenSSL 4.0 in memory", "floor", "floor"),
    Peer("floor-stdlib", "floor: OpenSSL 3.0 (stdlib ssl)", "floor-stdlib", None),
    Peer("floor-x25519", "floor: OpenSSL 4.0, X25519 client", "floor-x25519", None, records=False,
         memory=False),
)  # fmt: skip
PEER_OF_KIND = {kind: p for p in PEERS for kind in (p.tls, p.dtls) if kind}


def library(kind: str, go_version: str = "") -> str:
    """The TLS library under a server kind, with its version: 'OpenSSL 3.0.19 (ssl)'."""
    if kind in ("tcp", "udp"):
        return "none"
    if kind == "go":
        return f"Go {go_version.removeprefix('go')} crypto/tls".replace("  ", " ")
    if kind in ("trio-tls", "asyncio", "uvloop", "floor-stdlib"):
        return " ".join(ssl.OPENSSL_VERSION.split()[:2]) + " (ssl)"
    bundled = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode().split()
    return " ".join(bundled[:2]) + " (pyOpenSSL)"


# -- what can run here --------------------------------------------------------------


def build_go(folder: Path) -> tuple[Path | None, str]:
    """Build the Go server into *folder*: (binary, go version) or (None, why not)."""
    go = shutil.which("go")
    if go is None:
        return None, "`go` is not on PATH (apt-get install golang-go)"
    env = os.environ | {
        "GOFLAGS": "-mod=mod",  # a go.mod without requires: nothing to download
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GO111MODULE": "on",
        "CGO_ENABLED": "0",
    }
    cache = Path(tempfile.gettempdir()) / "trio-tls-dtls-go"
    env.setdefault("GOCACHE", str(cache / "cache"))
    env.setdefault("GOPATH", str(cache / "path"))
    binary = folder / "tls-echo"
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        last = (build.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"`go build` in {GO_SOURCE} failed: {last}"
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    words = version.stdout.split()
    return binary, words[2] if len(words) > 2 else "go"


def unavailable(folder: Path) -> tuple[dict[str, str], Path | None, str]:
    """Kinds that cannot run here and why, the Go binary, and Go's version."""
    skipped: dict[str, str] = {}
    binary, go_version = build_go(folder)
    if binary is None:
        skipped["go"] = go_version
        go_version = ""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        skipped["uvloop"] = "uvloop is not installed (pip install 'trio-tls-dtls[bench]')"
    return skipped, binary, go_version


# -- pinning ---------------------------------------------------------------------------


class Pinning:
    """The server CPU (via taskset) and the load CPU (this process), if there are two."""

    def __init__(self, server_cpu: int | None, load_cpu: int | None) -> None:
        self.original = os.sched_getaffinity(0)
        cpus = sorted(self.original)
        self.server_cpu = cpus[0] if server_cpu is None and cpus else server_cpu
        self.load_cpu = cpus[1] if load_cpu is None and len(cpus) > 1 else load_cpu
        self.why_not = ""
        if len(cpus) < 2:
            self.why_not = f"only {len(cpus)} CPU available to this process"
        elif shutil.which("taskset") is None:
            self.why_not = "taskset is not installed (util-linux)"
        elif self.server_cpu == self.load_cpu:
            self.why_not = "--server-cpu and --load-cpu are the same CPU"
        elif not {self.server_cpu, self.load_cpu} <= self.original:
            self.why_not = f"CPUs {self.server_cpu} and {self.load_cpu} are not both available"

    @property
    def active(self) -> bool:
        return not self.why_not

    def describe(self) -> str:
        if not self.active:
            return f"not pinned: {self.why_not}"
        return (
            f"servers pinned to CPU {self.server_cpu} (taskset), load client to CPU {self.load_cpu}"
        )

    def prefix(self) -> list[str]:
        return ["taskset", "-c", str(self.server_cpu)] if self.active else []

    def pin_load(self) -> None:
        if self.active:
            assert self.load_cpu is not None
            os.sched_setaffinity(0, {self.load_cpu})

    def unpin(self) -> None:
        os.sched_setaffinity(0, self.original)


# -- server processes -------------------------------------------------------------


class Server:
    """One server (or floor) in a child process we started; stopped by its PID."""

    def __init__(
        self,
        kind: str,
        pki: Path,
        *,
        mtls: bool = False,
        pinning: Pinning | None = None,
        go_binary: Path | None = None,
    ) -> None:
        self.kind = kind
        self.is_floor = kind in FLOOR_KINDS
        flag = ["--mtls"] if mtls else []
        if kind == "go":
            assert go_binary is not None
            argv = [str(go_binary), "-pki", str(pki)] + (["-mtls"] if mtls else [])
        elif self.is_floor:
            argv = [sys.executable, str(FLOOR), kind, str(pki), *flag]
        else:
            argv = [sys.executable, str(SERVERS), kind, str(pki), *flag]
        argv = (pinning.prefix() if pinning else []) + argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if self.is_floor else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"server {kind} did not start (exit {self.proc.returncode})")
        self.port = int(line[1])

    def command(self, **cmd: Any) -> dict[str, Any]:
        """Ask the floor process to measure something; its JSON answer."""
        assert self.is_floor
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} exited (status {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (all threads) so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # a floor ends at the end of its input
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- what was negotiated -------------------------------------------------------------


def probe(proto: str, port: int, settings: ClientSettings, mtu: int = 1200) -> str:
    """One handshake as the load client makes it: 'TLSv1.3 X25519MLKEM768', or why not."""
    ctx = build_client_context(settings, dtls=proto == "dtls")
    kind = socket.SOCK_DGRAM if proto == "dtls" else socket.SOCK_STREAM
    try:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            if proto == "dtls":
                engine: TLSEngine = DTLSEngine.connect(ctx, "localhost", mtu=mtu)
            else:
                engine = TLSEngine.client(ctx, "localhost")
            for _ in range(20):
                done = engine.do_handshake()
                if isinstance(engine, DTLSEngine):
                    for datagram in engine.datagrams_to_send():
                        sock.send(datagram)
                elif data := engine.bytes_to_send():
                    sock.sendall(data)
                if done:
                    break
                received = sock.recv(65536)
                if isinstance(engine, DTLSEngine):
                    engine.receive_datagram(received)
                elif received:
                    engine.receive_bytes(received)
                else:
                    return "probe: closed during the handshake"
            conn = engine.connection
            group = getattr(conn, "get_group_name", lambda: None)() or "?"
            engine.close()
            with_close = engine.bytes_to_send()
            if with_close and proto == "tls":
                sock.sendall(with_close)
            elif with_close:
                sock.send(with_close)
            return f"{conn.get_protocol_version_name()} {group}"
    except Exception as exc:  # a probe never stops the suite (an OSError, an SSL error)
        return f"probe failed: {type(exc).__name__}"
