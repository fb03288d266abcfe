"""The TOML config file: values, errors that name the key and the file, flags over file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.conftest import PKIFiles
from trio_tls_dtls.cli.config_file import DEFAULTS, load_config_file
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options, settings_from
from trio_tls_dtls.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trio-tlsd.toml"
    path.write_text(text)
    return path


def test_values_are_checked_and_paths_resolved(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'port = 8443\ncert = "tls/server.pem"\nidle_timeout = false\n'
        'protocols = ["dtls"]\nalpn = ["h2"]\nhandshake_timeout = 2\n'
        "reload_interval = 0\nticket_key_rotation = 3600\n",
    )
    options = load_config_file(path)
    assert options == {
        "port": 8443,
        "cert": tmp_path / "tls" / "server.pem",
        "idle_timeout": None,
        "protocols": ["dtls"],
        "alpn": ["h2"],
        "handshake_timeout": 2.0,
        "reload_interval": 0.0,
        "ticket_key_rotation": 3600.0,
    }
    assert set(options) <= set(DEFAULTS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("[tls]\nport = 1\n", "unknown key 'tls' (the file is flat"),
        ('port = "443"\n', "key 'port': expected a port 0-65535, got '443'"),
        ("port = 70000\n", "key 'port': expected a port 0-65535, got 70000"),
        ("idle_timeout = -1\n", "key 'idle_timeout': expected a positive number"),
        ("max_connection_lifetime = 0\n", "key 'max_connection_lifetime': expected a positive"),
        ("max_connections = true\n", "key 'max_connections': expected a positive integer"),
        ('verify_client = "maybe"\n', "key 'verify_client': expected one of"),
        ('protocols = ["quic"]\n', "key 'protocols'"),
        ("mtu = 100\n", "key 'mtu': expected an MTU of 512-65507 bytes, got 100"),
        ("port = \n", "is not valid TOML"),
        ("reload_interval = -5\n", "key 'reload_interval': expected 0 or a positive number"),
        ("ticket_key_rotation = true\n", "key 'ticket_key_rotation': expected a number"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'no.toml'}"):
        load_config_file(tmp_path / "no.toml")


def test_check_config_prints_the_effective_configuration(pki: PKIFiles, tmp_path: Path) -> None:
    path = write(tmp_path, f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nport = 9443\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "port = 9443" in result.stdout
    assert f'cert = "{pki.server_cert}"' in result.stdout
    assert "max_connections = 1024" in result.stdout  # defaults shown too
    assert "idle_timeout = 300.0" in result.stdout


def test_check_config_loads_the_certificates(pki: PKIFiles, tmp_path: Path) -> None:
    path = write(tmp_path, f'cert = "{pki.server_cert}"\nkey = "{pki.client_key}"\n')
    assert_one_line_error(run_cli("check-config", str(path)), "does not match")
    path = write(tmp_path, 'colour = "blue"\n')
    assert_one_line_error(run_cli("check-config", str(path)), str(path), "unknown key 'colour'")


def test_max_connection_lifetime_is_off_unless_the_file_or_a_flag_sets_it(
    pki: PKIFiles, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nmax_connection_lifetime = 3600\n',
    )

    def lifetime(*flags: str) -> float | None:
        args = build_parser().parse_args(["serve", *flags])
        settings, _ = settings_from(serve_options(args), make_dev_pki=False)
        return settings.max_connection_lifetime

    assert lifetime("--cert", str(pki.server_cert), "--key", str(pki.server_key)) is None
    assert lifetime("--config", str(path)) == 3600.0
    assert lifetime("--config", str(path), "--max-connection-lifetime", "90") == 90.0
    assert lifetime("--config", str(path), "--max-connection-lifetime", "off") is None


def test_server_settings_name_a_bad_lifetime(pki: PKIFiles) -> None:
    for bad in (0, -1.0, float("inf"), "1h", True):
        with pytest.raises(ConfigError, match="max_connection_lifetime must be"):
            pki.server_settings(max_connection_lifetime=bad)


async def test_flags_override_the_file(pki: PKIFiles, tmp_path: Path) -> None:
    from tests.cli.test_cli import bound_port, serving

    path = write(
        tmp_path,
        f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\n'
        'port = 1\nhost = "192.0.2.1"\nprotocols = ["dtls"]\n',
    )
    # --port/--host/--tls-only win over the file's (unusable) values.
    async with serving(tmp_path, "--config", str(path), "--tls-only") as (_, banner):
        assert bound_port(banner, "tcp") > 1
        assert "on udp" not in banner


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under *folder* with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_check_config_writes_nothing(pki: PKIFiles, tmp_path: Path) -> None:
    """check-config only reads: no key log file, no dev PKI, no folders, no cookie secret."""
    shutil.copytree(pki.dir, tmp_path / "pki")
    (tmp_path / "logs").mkdir()
    path = write(
        tmp_path,
        'cert = "pki/server.pem"\nkey = "pki/server.key"\nca = "pki/ca.pem"\n'
        'verify_client = "required"\nkeylog_file = "logs/keys.log"\n',
    )
    before = tree(tmp_path)
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == before
    assert not (tmp_path / "logs" / "keys.log").exists()


def test_check_config_without_cert_makes_no_dev_pki(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9443\n")
    before = tree(tmp_path)
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would create a development PKI" in result.stdout
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("keylog", "fragment"),
    [("missing/keys.log", "no such folder"), ("logs", "is a directory")],
)
def test_check_config_checks_the_key_log_path(
    pki: PKIFiles, tmp_path: Path, keylog: str, fragment: str
) -> None:
    (tmp_path / "logs").mkdir()
    path = write(
        tmp_path,
        f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nkeylog_file = "{keylog}"\n',
    )
    result = run_cli("check-config", str(path))
    assert_one_line_error(result, "cannot open key log file", str(tmp_path / keylog), fragment)
