"""Every path where serve, certs, cookie-secret, client and bench meet a file or a port.

Each bad file (missing, a directory, under a file, of the wrong size, not
UTF-8) and each port that cannot be had (in use by TCP or UDP, held by
another SO_REUSEPORT group, on an address not ours) must end in one line
on stderr naming the file or port, with exit status 2: never a traceback
(issue 14, item 6). The tests run as root, so "cannot be written" is made
with paths no permission bit governs: under a file, or in /proc.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import CLI, EMPTY_DIR, assert_one_line_error, run_cli
from tests.conftest import PKIFiles

pytestmark = pytest.mark.timeout(60)


@contextmanager
def held_port(*, reuse_port: bool = False, tcp: bool = True, udp: bool = True) -> Iterator[int]:
    """A loopback port number held by this process (TCP listening and/or UDP bound)."""
    for _ in range(50):
        sockets = []
        try:
            for kind, wanted in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
                if not wanted:
                    continue
                sock = socket.socket(socket.AF_INET, kind)
                sockets.append(sock)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", sockets[0].getsockname()[1] if len(sockets) > 1 else 0))
                if kind == socket.SOCK_STREAM:
                    sock.listen()
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        try:
            yield int(sockets[0].getsockname()[1])
        finally:
            for sock in sockets:
                sock.close()
        return
    raise AssertionError("no free port")


def free_port() -> int:
    with held_port() as port:
        return port


def serve(pki: PKIFiles, *flags: str) -> list[str]:
    files = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    return ["serve", *files, "--host", "127.0.0.1", *flags]


# -- ports ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--metrics-port", "--health-port"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_operator_port_in_use(pki: PKIFiles, workers: list[str], flag: str) -> None:
    with held_port(udp=False) as busy:
        port = "0" if not workers else str(free_port())
        result = run_cli(*serve(pki, "--port", port, flag, str(busy), *workers))
    assert_one_line_error(result, f"TCP 127.0.0.1:{busy}", "already in use")


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_port_in_use_with_workers(pki: PKIFiles, proto: str) -> None:
    # The supervisor binds every worker's sockets before it forks: one line,
    # not a crash loop of workers.
    with held_port(tcp=proto == "TCP", udp=proto == "UDP") as busy:
        result = run_cli(*serve(pki, "--port", str(busy), "--workers", "2"))
    assert_one_line_error(result, f"{proto} 127.0.0.1:{busy}", "already in use")


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_a_port_held_by_another_reuse_port_group_is_refused(pki: PKIFiles, proto: str) -> None:
    """A second ``serve --workers`` (or an old one's orphan) must not share the port silently."""
    with held_port(reuse_port=True, tcp=proto == "TCP", udp=proto == "UDP") as busy:
        result = subprocess.run(
            [*CLI, *serve(pki, "--port", str(busy), "--workers", "2")],
            cwd=EMPTY_DIR,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    assert_one_line_error(result, f"{proto} 127.0.0.1:{busy}", "already in use")


def test_udp_port_in_use_while_tcp_is_free(pki: PKIFiles) -> None:
    with held_port(tcp=False) as busy:
        result = run_cli(*serve(pki, "--port", str(busy)))
    assert_one_line_error(result, f"UDP 127.0.0.1:{busy}", "already in use")


def test_listen_address_not_ours_or_unknown(pki: PKIFiles) -> None:
    result = run_cli(*serve(pki, "--port", "0", "--metrics-port", str(free_port()),
                            "--metrics-host", "192.0.2.1"))  # fmt: skip
    assert_one_line_error(result, "192.0.2.1", "not an address of this host")
    result = run_cli(*serve(pki, "--port", "0", "--host", "no-such-host.invalid"))
    assert_one_line_error(result, "no-such-host.invalid")


# -- serve: files ---------------------------------------------------------------------

FileCase = Callable[[PKIFiles, Path], tuple[list[str], list[str]]]


def _dir(tmp: Path) -> Path:
    folder = tmp / "a-directory"
    folder.mkdir(exist_ok=True)
    return folder


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return path


SERVE_FILE_CASES: dict[str, FileCase] = {
    "keylog is a directory": lambda p, t: (
        ["--keylog-file", str(_dir(t))],
        ["key log file", str(_dir(t))],
    ),
    "keylog under a missing folder": lambda p, t: (
        ["--keylog-file", str(t / "missing" / "k.log")],
        ["key log file", str(t / "missing" / "k.log")],
    ),
    "keylog under a file": lambda p, t: (
        ["--keylog-file", str(_file(t) / "k.log")],
        ["key log file", "Not a directory"],
    ),
    "cookie secret is a directory": lambda p, t: (
        ["--cookie-secret-file", str(_dir(t))],
        ["cookie secret file", str(_dir(t))],
    ),
    "cookie secret missing": lambda p, t: (
        ["--cookie-secret-file", str(t / "none.key")],
        ["cookie secret file", str(t / "none.key")],
    ),
    "cookie secret too short": lambda p, t: (
        ["--cookie-secret-file", str(_short_secret(t))],
        ["cookie secret file", "at least 32"],
    ),
    "config is a directory": lambda p, t: (
        ["--config", str(_dir(t))],
        ["config file", str(_dir(t))],
    ),
    "config missing": lambda p, t: (
        ["--config", str(t / "none.toml")],
        ["config file", str(t / "none.toml")],
    ),
    "config not text": lambda p, t: (["--config", str(_binary(t))], [str(_binary(t)), "UTF-8"]),
    "CA is a directory": lambda p, t: (
        ["--ca", str(_dir(t)), "--verify-client", "required"],
        ["CA file", str(_dir(t))],
    ),
    "key password file is a directory": lambda p, t: (
        ["--key-password-file", str(_dir(t))],
        ["key password file", str(_dir(t))],
    ),
    "OCSP staple missing": lambda p, t: (
        ["--ocsp-staple", str(t / "none.der")],
        ["OCSP staple file", str(t / "none.der")],
    ),
}


def _short_secret(tmp: Path) -> Path:
    path = tmp / "short.key"
    path.write_text("00" * 10 + "\n")
    return path


def _binary(tmp: Path) -> Path:
    path = tmp / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00port")
    return path


@pytest.mark.parametrize("case", SERVE_FILE_CASES, ids=list(SERVE_FILE_CASES))
def test_serve_file_errors(pki: PKIFiles, tmp_path: Path, case: str) -> None:
    flags, fragments = SERVE_FILE_CASES[case](pki, tmp_path)
    assert_one_line_error(run_cli(*serve(pki, "--port", "0", *flags)), *fragments)


@pytest.mark.parametrize("certs_is", ["a file", "in /proc"])
def test_serve_without_cert_where_certs_cannot_be_made(tmp_path: Path, certs_is: str) -> None:
    # /proc refuses a new folder even to root: it stands for a read-only directory.
    if certs_is == "a file":
        (tmp_path / "certs").write_text("a file, not a folder\n")
        cwd = tmp_path
    else:
        cwd = Path("/proc")
    result = run_cli("serve", "--port", "0", cwd=cwd)
    assert_one_line_error(result, "no --cert/--key given", "./certs", "--cert and --key")


# -- certs and cookie-secret -----------------------------------------------------------


def test_certs_dir_under_a_file_or_on_a_file_or_unmakeable(tmp_path: Path) -> None:
    a_file = _file(tmp_path)
    assert_one_line_error(run_cli("certs", "--dir", str(a_file / "pki")), str(a_file / "pki"))
    assert_one_line_error(run_cli("certs", "--dir", str(a_file)), str(a_file), "not a directory")
    assert_one_line_error(run_cli("certs", "--dir", "/proc/pki"), "/proc/pki")


def test_certs_issue_onto_a_directory(tmp_path: Path) -> None:
    assert run_cli("certs", "--dir", str(tmp_path)).returncode == 0
    (tmp_path / "api.example.pem").mkdir()
    result = run_cli("certs", "issue", "api.example", "--dir", str(tmp_path), "--force")
    assert_one_line_error(result, "cannot write", str(tmp_path / "api.example.pem"))


def test_certs_dir_under_a_missing_folder_makes_the_folders(tmp_path: Path) -> None:
    folder = tmp_path / "missing" / "deeper" / "pki"
    result = run_cli("certs", "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert (folder / "server.key").is_file()


def test_cookie_secret_paths(tmp_path: Path) -> None:
    a_file = _file(tmp_path)
    result = run_cli("cookie-secret", str(a_file / "c.key"))
    assert_one_line_error(result, str(a_file / "c.key"), "Not a directory")
    result = run_cli("cookie-secret", str(tmp_path / "missing" / "c.key"))
    assert_one_line_error(result, str(tmp_path / "missing" / "c.key"))
    result = run_cli("cookie-secret", str(_dir(tmp_path)), "--force")
    assert_one_line_error(result, str(_dir(tmp_path)))


# -- client and bench ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["client", "bench"])
def test_client_and_bench_file_and_port_errors(pki: PKIFiles, tmp_path: Path, command: str) -> None:
    target = f"127.0.0.1:{free_port()}"
    head = ["client", "tls", target] if command == "client" else ["bench", target]
    ca = ["--ca", str(pki.ca)]
    mtls = ["--mtls"] if command == "bench" else []
    cases = [
        (["--ca", str(_dir(tmp_path))], ["CA file", str(_dir(tmp_path))]),
        (["--ca", str(tmp_path / "none.pem")], ["CA file", str(tmp_path / "none.pem")]),
        (
            [*ca, *mtls, "--cert", str(_dir(tmp_path)), "--key", str(pki.client_key)],
            ["certificate file", str(_dir(tmp_path))],
        ),
        (
            [*ca, *mtls, "--cert", str(pki.client_cert), "--key", str(tmp_path / "none.key")],
            ["key file", str(tmp_path / "none.key")],
        ),
        (ca, ["connection refused", target]),
    ]
    for flags, fragments in cases:
        assert_one_line_error(run_cli(*head, *flags), *fragments)
    unknown = ["client", "tls"] if command == "client" else ["bench"]
    result = run_cli(*unknown, "no-such-host.invalid:443", *ca)
    assert_one_line_error(result, "no-such-host.invalid")


async def test_bench_results_file_that_cannot_be_written(pki: PKIFiles, tmp_path: Path) -> None:
    port = free_port()
    server = await trio.lowlevel.open_process(
        [*CLI, *serve(pki, "--port", str(port), "--tls-only")],
        cwd=EMPTY_DIR,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stderr is not None
        output = b""
        with trio.fail_after(20):
            while b"serving" not in output:
                output += await server.stderr.receive_some()
        a_file = _file(tmp_path)
        for where in (_dir(tmp_path), a_file / "results.json"):
            bench = [*CLI, "bench", f"127.0.0.1:{port}", "--ca", str(pki.ca), "--count", "1"]
            bench += ["--clients", "1", "--sizes", "64", "--no-progress", "--json", str(where)]
            result = await trio.run_process(bench, capture_stdout=True, capture_stderr=True,
                                            check=False, cwd=EMPTY_DIR)  # fmt: skip
            assert result.returncode == 2, result.stderr
            lines = result.stderr.decode().strip().splitlines()
            assert len(lines) == 1 and str(where) in lines[0], lines
    finally:
        server.terminate()
        with trio.fail_after(15):
            await server.wait()
