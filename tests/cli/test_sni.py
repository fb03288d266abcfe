"""SNI from the command line and the config file: ``--sni NAME=CERT,KEY`` and ``[[sni]]``.

The interop tests run ``trio-tlsd serve`` and connect with ``openssl s_client
-servername`` (TLS and DTLS) and with our client, checking which certificate
each name gets; a SIGHUP re-reads the SNI certificates as it does ``--cert``.
"""

from __future__ import annotations

import argparse
import signal
import tomllib
from pathlib import Path

import pytest

from tests import openssl
from tests.cli.test_cli import _read_until, assert_one_line_error, bound_port, run_cli, serving
from tests.conftest import PKIFiles
from trio_tls_dtls import open_dtls_channel, open_tls_stream
from trio_tls_dtls.cli.config_file import load_config_file, render_options
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options, settings_from
from trio_tls_dtls.cli.sni_option import check_sni_tables, parse_sni_flag
from trio_tls_dtls.core.errors import ConfigError

OTHER = "other.example"


@pytest.fixture
def sni_files(pki: PKIFiles, tmp_path: Path) -> Path:
    """The pki's server files, and other.pem/.key for other.example and *.other.example."""
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((pki.dir / name).read_bytes())
    (tmp_path / "server.key").chmod(0o600)
    write_other(tmp_path, pki)
    return tmp_path


def write_other(folder: Path, pki: PKIFiles) -> int:
    """(Re)issue other.pem/.key in *folder*; its serial number."""
    issued = pki.pki.issue_server([OTHER, f"*.{OTHER}"])
    (folder / "other.pem").write_bytes(issued.cert_pem)
    (folder / "other.key").write_bytes(issued.key_pem)
    (folder / "other.key").chmod(0o600)
    return issued.cert.serial_number


def serve_flags(folder: Path) -> list[str]:
    return [
        "--cert", str(folder / "server.pem"), "--key", str(folder / "server.key"),
        "--sni", f"{OTHER}={folder / 'other.pem'},{folder / 'other.key'}",
        "--sni", f"*.{OTHER}={folder / 'other.pem'},{folder / 'other.key'}",
    ]  # fmt: skip


def options(*flags: str) -> dict[str, object]:
    return serve_options(build_parser().parse_args(["serve", *flags]))


# -- parsing -------------------------------------------------------------------


def test_flag_values() -> None:
    entry = parse_sni_flag("API.Example.com.=a.pem,a.key")
    assert entry == {"names": ["api.example.com"], "cert": Path("a.pem"), "key": Path("a.key")}
    assert parse_sni_flag("*.example.com=a,b")["names"] == ["*.example.com"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("example.com", "expected NAME=CERT,KEY"),
        ("example.com=a.pem", "expected NAME=CERT,KEY"),
        ("example.com=a,b,c", "expected NAME=CERT,KEY"),
        ("=a,b", "expected NAME=CERT,KEY"),
        ("exa mple.com=a,b", "is not a server name"),
        ("a.*.example=a,b", "is not a server name"),
        ("-a.example=a,b", "is not a server name"),
        ("192.0.2.1=a,b", "is an IP address"),
    ],
)
def test_bad_flag_values(text: str, fragment: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        parse_sni_flag(text)


def test_bad_flag_is_one_line_on_the_command_line() -> None:
    result = run_cli("serve", "--sni", "example.com=only-a-cert.pem")
    assert_one_line_error(result, "--sni", "expected NAME=CERT,KEY", "only-a-cert.pem")


def test_repeated_flags_merge_per_certificate() -> None:
    sni = options("--sni", "a.example=x.pem,x.key", "--sni", "b.example=x.pem,x.key",
                  "--sni", "c.example=y.pem,y.key")["sni"]  # fmt: skip
    assert sni == [
        {"names": ["a.example", "b.example"], "cert": Path("x.pem"), "key": Path("x.key")},
        {"names": ["c.example"], "cert": Path("y.pem"), "key": Path("y.key")},
    ]


def test_a_name_given_twice_is_refused() -> None:
    result = run_cli("serve", "--sni", "a.example=x.pem,x.key", "--sni", "a.example=y.pem,y.key")
    assert_one_line_error(result, "--sni: server name a.example is given twice")


def test_config_tables(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(
        '[[sni]]\nnames = ["a.example", "*.a.example"]\ncert = "a.pem"\nkey = "keys/a.key"\n'
        '[[sni]]\nnames = ["b.example"]\ncert = "/etc/b.pem"\nkey = "/etc/b.key"\n'
    )
    sni = load_config_file(path)["sni"]
    assert sni == [
        {"names": ["a.example", "*.a.example"], "cert": tmp_path / "a.pem",
         "key": tmp_path / "keys" / "a.key"},
        {"names": ["b.example"], "cert": Path("/etc/b.pem"), "key": Path("/etc/b.key")},
    ]  # fmt: skip
    # check-config prints it as TOML that reads back to the same entries.
    (line,) = [x for x in render_options({"sni": sni}).splitlines() if x.startswith("sni =")]
    assert check_sni_tables(tomllib.loads(line)["sni"], Path("/")) == sni


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[sni]\nnames = ["a.example"]\ncert = "a"\nkey = "b"\n', "double brackets"),
        ('[[sni]]\nnames = ["a.example"]\ncert = "a"\n', "table 1: no 'key'"),
        ('[[sni]]\nname = "a.example"\ncert = "a"\nkey = "b"\n', "unknown key 'name'"),
        ('[[sni]]\nnames = "a.example"\ncert = "a"\nkey = "b"\n', "non-empty list of strings"),
        ('[[sni]]\nnames = []\ncert = "a"\nkey = "b"\n', "non-empty list of strings"),
        ('[[sni]]\nnames = ["a b"]\ncert = "a"\nkey = "b"\n', "'a b' is not a server name"),
        ('[[sni]]\nnames = ["a.example"]\ncert = 3\nkey = "b"\n', "cert must be a path"),
        (
            '[[sni]]\nnames = ["a.example"]\ncert = "a"\nkey = "b"\n'
            '[[sni]]\nnames = ["A.example"]\ncert = "c"\nkey = "d"\n',
            "server name a.example is given twice",
        ),
    ],
)
def test_bad_config_tables(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: key 'sni': .*{fragment}"):
        load_config_file(path)
    assert_one_line_error(run_cli("check-config", str(path)), str(path), fragment)


def test_flags_replace_the_files_tables(sni_files: Path) -> None:
    config = sni_files / "serve.toml"
    config.write_text('[[sni]]\nnames = ["file.example"]\ncert = "other.pem"\nkey = "other.key"\n')
    opts = options("--config", str(config), *serve_flags(sni_files))
    settings, _ = settings_from(opts, make_dev_pki=False)
    (sni,) = settings.sni_certificates
    assert sni.server_names == (OTHER, f"*.{OTHER}")
    assert sni.cert_file == sni_files / "other.pem"


# -- errors when the files are loaded ------------------------------------------------------


def test_missing_sni_file_names_it(sni_files: Path) -> None:
    flags = [*serve_flags(sni_files)[:4], "--sni", f"{OTHER}={sni_files / 'nope.pem'},x.key"]
    result = run_cli("serve", *flags)
    assert_one_line_error(
        result, f"SNI certificate for {OTHER}", "not found", str(sni_files / "nope.pem")
    )


def test_sni_key_that_does_not_match(sni_files: Path) -> None:
    mismatch = f"{OTHER}={sni_files / 'other.pem'},{sni_files / 'server.key'}"
    flags = [*serve_flags(sni_files)[:4], "--sni", mismatch]
    result = run_cli("serve", *flags)
    assert_one_line_error(result, f"SNI certificate for {OTHER}", "does not match")


def test_check_config_loads_sni_certificates(sni_files: Path) -> None:
    config = sni_files / "serve.toml"
    config.write_text(
        'cert = "server.pem"\nkey = "server.key"\n'
        '[[sni]]\nnames = ["other.example"]\ncert = "other.pem"\nkey = "server.key"\n'
    )
    assert_one_line_error(run_cli("check-config", str(config)), "SNI certificate", "does not match")


# -- against real peers ------------------------------------------------------------------


def subject_cn(report: str) -> str:
    (line,) = [x for x in report.splitlines() if x.startswith("subject=")]
    return line.rsplit("CN = ", 1)[1].strip()


async def s_client_cn(port: int, pki: PKIFiles, name: str | None, *, dtls: bool) -> str:
    args = ["s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca),
            "-verify_return_error", "-no_ign_eof"]  # fmt: skip
    if name is None:
        args.append("-noservername")
    else:
        args += ["-servername", name, "-verify_hostname", name]
    if dtls:
        args.append("-dtls1_2")
    async with openssl.openssl_process(*args) as client:
        report = await openssl.s_client_echo_session(client)
    assert "Verify return code: 0 (ok)" in report, report
    return subject_cn(report)


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [(OTHER, OTHER), (f"api.{OTHER}", OTHER), ("localhost", "localhost"), (None, "localhost")],
)
@pytest.mark.interop
@pytest.mark.skipif(openssl.OPENSSL is None, reason="needs the openssl command-line tool")
async def test_s_client_gets_the_certificate_for_its_name(
    pki: PKIFiles, sni_files: Path, dtls: bool, name: str | None, expected: str
) -> None:
    async with serving(sni_files, *serve_flags(sni_files)) as (_, banner):
        assert f"SNI: {OTHER}, *.{OTHER} get {sni_files / 'other.pem'}" in banner
        port = bound_port(banner, "tcp")
        assert await s_client_cn(port, pki, name, dtls=dtls) == expected


async def test_our_client_and_a_reload(pki: PKIFiles, sni_files: Path) -> None:
    settings = pki.client_settings()
    async with serving(sni_files, *serve_flags(sni_files)) as (process, banner):
        port = bound_port(banner, "tcp")
        stream = await open_tls_stream("127.0.0.1", port, settings=settings, server_hostname=OTHER)
        assert stream.info.certificate is not None
        first = stream.info.certificate.serial_number
        await stream.aclose()
        channel = await open_dtls_channel(
            "127.0.0.1", port, settings=settings, server_hostname=f"www.{OTHER}"
        )
        assert channel.info.certificate is not None
        assert channel.info.certificate.serial_number == first
        await channel.send(b"sni over dtls")
        assert await channel.receive() == b"sni over dtls"
        await channel.aclose()
        # SIGHUP re-reads the SNI certificate files as well as --cert.
        fresh = write_other(sni_files, pki)
        assert fresh != first
        process.send_signal(signal.SIGHUP)
        await _read_until(process, b"reloaded certificates")
        stream = await open_tls_stream("127.0.0.1", port, settings=settings, server_hostname=OTHER)
        assert stream.info.certificate is not None
        assert stream.info.certificate.serial_number == fresh
        await stream.aclose()
        stream = await open_tls_stream(
            "127.0.0.1", port, settings=settings, server_hostname="localhost"
        )
        assert stream.info.certificate is not None
        assert stream.info.certificate.serial_number == pki.pki.server.cert.serial_number
        await stream.aclose()


async def test_a_changed_sni_file_reloads_without_a_signal(pki: PKIFiles, sni_files: Path) -> None:
    """--reload-interval watches the SNI certificate files too (a Kubernetes Secret update)."""
    settings = pki.client_settings()
    flags = [*serve_flags(sni_files), "--tls-only", "--reload-interval", "0.2"]
    async with serving(sni_files, *flags) as (process, banner):
        port = bound_port(banner, "tcp")
        fresh = write_other(sni_files, pki)
        await _read_until(process, b"reloaded certificates")  # no SIGHUP sent
        stream = await open_tls_stream("127.0.0.1", port, settings=settings, server_hostname=OTHER)
        assert stream.info.certificate is not None
        assert stream.info.certificate.serial_number == fresh
        await stream.aclose()
