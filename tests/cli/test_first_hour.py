"""What a new user meets first, checked against the program: usage, hints, and the docs' output.

* Bare ``trio-tlsd`` prints its usage and where to read more.
* The ``connect with:`` hints ``serve`` prints connect: with ``-cert/-key``
  when client certificates are required, and with the PROXY protocol on, no
  plain ``s_client`` line for TLS (it would be refused: it sends no header).
* The quick start's and the tutorial's ``serve`` output blocks are what
  ``serve`` prints (times, the port and the cookie fingerprint aside), the
  tutorial's step 7 command works against the server step 6 left running,
  and the quick start's Python program runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests import openssl
from tests.cli.test_cli import bound_port, run_cli, serving
from tests.cli.test_docs_config import certs_dir, run_example  # noqa: F401 (a fixture)
from trio_tls_dtls.cli.main import main
from trio_tls_dtls.cli.serve_command import connect_hint
from trio_tls_dtls.core.settings import CertificateSettings, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.rst"
TUTORIAL = ROOT / "docs" / "tutorial.rst"

needs_openssl = pytest.mark.skipif(
    openssl.OPENSSL is None, reason="needs the openssl command-line tool"
)


def test_bare_command_prints_usage_and_a_help_hint() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    usage, hint = result.stderr.strip().split("\ntrio-tlsd: error: ")
    assert usage.startswith("usage: trio-tlsd ")
    assert "serve" in usage and "certs" in usage
    assert "run 'trio-tlsd --help'" in hint
    assert result.stdout == ""


# -- the connect hints ------------------------------------------------------------


def settings(**options: object) -> ServerSettings:
    return ServerSettings(certificate=CertificateSettings("s.pem", "s.key"), **options)  # type: ignore[arg-type]


DEV_CA = "-CAfile certs/ca.pem -verify_return_error"
DEV_CLIENT = "-cert certs/client.pem -key certs/client.key"


def test_hint_for_the_development_pki() -> None:
    hint = connect_hint(4433, settings(), dev=True)
    assert hint == f"openssl s_client -connect localhost:4433 -servername localhost {DEV_CA}"
    dtls = connect_hint(4433, settings(), dev=True, dtls=True)
    assert dtls.startswith("openssl s_client -dtls1_2 -connect localhost:4433 ")


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_hint_passes_a_client_certificate_when_asked_for(mode: str) -> None:
    mtls = settings(verify_client=mode, ca_file="certs/ca.pem")
    for dtls in (False, True):
        assert connect_hint(4433, mtls, dev=True, dtls=dtls).endswith(f"{DEV_CA} {DEV_CLIENT}")
    # Your own certificates: placeholders for your client's, never the dev PKI's.
    own = settings(verify_client=mode, ca_file="/etc/clients-ca.pem")
    hint = connect_hint(4433, own, dev=False)
    assert hint.endswith("-cert CLIENT.pem -key CLIENT.key")
    assert "certs/" not in hint


def test_hint_with_the_proxy_protocol_is_not_a_plain_s_client_line() -> None:
    proxied = settings(proxy_protocol=True)
    hint = connect_hint(4433, proxied, dev=True)
    assert "openssl s_client -connect" not in hint
    assert "load balancer" in hint and "PROXY protocol header" in hint
    # DTLS has no PROXY header: its hint is unchanged.
    assert connect_hint(4433, proxied, dev=True, dtls=True).startswith("openssl s_client -dtls1_2")


async def test_serve_with_the_proxy_protocol_says_where_to_connect(tmp_path: Path) -> None:
    async with serving(tmp_path, "--proxy-protocol") as (_, banner):
        hints = [line for line in banner.splitlines() if line.startswith("connect with:")]
        assert len(hints) == 2
        assert "load balancer" in hints[0] and "s_client -connect" not in hints[0]
        assert hints[1].startswith("connect with: openssl s_client -dtls1_2 -connect")


def make_certs(folder: Path) -> Path:
    assert main(["certs", "--dir", str(folder / "certs")]) == 0
    return folder


def runnable(command: str, port: int, folder: Path) -> list[str]:
    """A printed or documented s_client command, as arguments, run from *folder* against *port*.

    The port is the test's, and the host 127.0.0.1 rather than localhost,
    which may resolve to ::1 first where the test server does not listen.
    """
    command = command.replace("localhost:4433", f"localhost:{port}")
    command = command.replace(f"localhost:{port}", f"127.0.0.1:{port}")
    command = command.replace(" certs/", f" {folder}/certs/")  # s_client runs elsewhere
    args = shlex.split(command)
    assert args[:2] == ["openssl", "s_client"], command
    return args[1:]


async def echo_through(args: list[str]) -> None:
    """Run s_client with *args*: a line it sends comes back (the handshake succeeded)."""
    async with openssl.openssl_process(*args) as client:
        line = openssl.unique_line()
        await client.send(line)
        await client.wait_for(line)


@pytest.mark.interop
@needs_openssl
@pytest.mark.parametrize("mode", ["required", "optional"])
async def test_printed_hints_connect_with_client_certificates(tmp_path: Path, mode: str) -> None:
    async with serving(make_certs(tmp_path), "--verify-client", mode) as (_, banner):
        port = bound_port(banner, "tcp")
        hints = [
            x.split("connect with: ", 1)[1] for x in banner.splitlines() if "connect with:" in x
        ]
        assert len(hints) == 2 and all(DEV_CLIENT in hint for hint in hints)
        for hint in hints:
            await echo_through(runnable(hint, port, tmp_path))


# -- the docs' serve output ---------------------------------------------------------


def literal_blocks(path: Path) -> list[list[str]]:
    """The reStructuredText literal blocks (after ``::``) of *path*, as lists of lines."""
    blocks: list[list[str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.endswith("::"):
            continue
        body: list[str] = []
        for text in lines[i + 1 :]:
            if text and not text.startswith("    "):
                break
            body.append(text[4:])
        while body and not body[0]:
            body.pop(0)
        while body and not body[-1]:
            body.pop()
        blocks.append(body)
    return blocks


def serve_blocks(path: Path) -> list[list[str]]:
    return [b for b in literal_blocks(path) if any(x.startswith("trio-tlsd: serving") for x in b)]


_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_FINGERPRINT = re.compile(r"fingerprint [0-9a-f]{16}$")


def normalised(lines: list[str], port: int = 4433) -> list[str]:
    out = []
    for line in lines:
        line = _TIME.sub("", line).replace(f":{port}", ":4433")
        out.append(_FINGERPRINT.sub("fingerprint <hex>", line))
    return out


DOC_BLOCKS = [
    pytest.param(path, n, id=f"{path.stem}-{n}")
    for path in (QUICKSTART, TUTORIAL)
    for n in range(len(serve_blocks(path)))
]


def test_the_docs_show_serve_output() -> None:
    assert len(serve_blocks(QUICKSTART)) == 1  # the first-run block
    assert len(serve_blocks(TUTORIAL)) == 2  # step 3, and step 6 with client certificates


@pytest.mark.parametrize(("path", "index"), DOC_BLOCKS)
async def test_docs_serve_output_is_the_programs(path: Path, index: int, tmp_path: Path) -> None:
    block = serve_blocks(path)[index]
    flags: list[str] = []
    if block[0].startswith("$ "):
        command = shlex.split(block.pop(0)[2:])
        assert command[:2] == ["trio-tlsd", "serve"], command
        flags = command[2:]
    if not any("created a development PKI" in line for line in block):
        make_certs(tmp_path)  # the tutorial made them in step 2
    # The docs show the default host (localhost), here 127.0.0.1.
    async with serving(tmp_path, *flags) as (_, banner):
        port = bound_port(banner, "tcp")
        assert normalised(banner.strip().splitlines(), port) == normalised(block)


def tutorial_step(number: int) -> str:
    text = TUTORIAL.read_text(encoding="utf-8")
    return text.split(f"\n{number}. ", 1)[1].split(f"\n{number + 1}. ", 1)[0]


@pytest.mark.interop
@needs_openssl
async def test_tutorial_step_7_works_after_step_6(tmp_path: Path) -> None:
    """Step 7's s_client runs against the server step 6 started (client certificates required)."""
    (step6,) = [b for b in serve_blocks(TUTORIAL) if b[0].startswith("$ trio-tlsd serve --")]
    flags = shlex.split(step6[0][2:])[2:]
    assert flags == ["--verify-client", "required"]
    (command,) = re.findall(r"^    \$ sleep 6 \| (openssl s_client .*)$", tutorial_step(7), re.M)
    async with serving(make_certs(tmp_path), *flags) as (_, banner):
        await echo_through(runnable(command, bound_port(banner, "tcp"), tmp_path))


def test_quickstart_python_runs(certs_dir: Path) -> None:  # noqa: F811 (the fixture)
    assert ".. literalinclude:: examples/quickstart.py" in QUICKSTART.read_text(encoding="utf-8")
    assert run_example("quickstart.py", certs_dir) == "b'HELLO'\n"
