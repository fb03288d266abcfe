"""The PROXY protocol's serve flags and config keys: what reaches the settings, one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.conftest import PKIFiles
from trio_tls_dtls.cli.config_file import DEFAULTS, load_config_file
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options, settings_from
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.core.settings import DEFAULT_PROXY_TRUSTED


def _options(*flags: str) -> dict[str, Any]:
    return serve_options(build_parser().parse_args(["serve", *flags]))


def test_flags(pki: PKIFiles, tmp_path: Path) -> None:
    assert _options()["proxy_protocol"] is False
    assert _options()["proxy_trusted"] == list(DEFAULT_PROXY_TRUSTED)
    options = _options(
        "--proxy-protocol", "--proxy-trusted", "10.0.0.0/24, 192.0.2.1", "--proxy-trusted", "::1"
    )
    assert options["proxy_protocol"] is True
    assert options["proxy_trusted"] == ["10.0.0.0/24", "192.0.2.1", "::1"]
    options.update(cert=pki.server_cert, key=pki.server_key)
    settings, _ = settings_from(options, make_dev_pki=False)
    assert settings.proxy_protocol
    assert settings.proxy_trusted == ("10.0.0.0/24", "192.0.2.1/32", "::1/128")
    # Flags override the file's list rather than add to it.
    config = tmp_path / "serve.toml"
    config.write_text('proxy_protocol = true\nproxy_trusted = ["10.9.0.0/16"]\n')
    from_file = _options("--config", str(config))
    assert (from_file["proxy_protocol"], from_file["proxy_trusted"]) == (True, ["10.9.0.0/16"])
    both = _options("--config", str(config), "--proxy-trusted", "10.8.0.1")
    assert both["proxy_trusted"] == ["10.8.0.1"]


def test_bad_flag_names_the_entry() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--proxy-trusted", "10.0.0.0/8,bogus"])
    assert_one_line_error(
        run_cli("serve", "--proxy-trusted", "10.0.0.0/8,10.0.0.1/8"),
        "--proxy-trusted",
        "'10.0.0.1/8' is not an IP address or network",
    )


def test_config_keys(tmp_path: Path) -> None:
    assert DEFAULTS["proxy_protocol"] is False
    path = tmp_path / "serve.toml"
    path.write_text('proxy_protocol = true\nproxy_trusted = ["10.0.0.0/8", "::1"]\n')
    assert load_config_file(path) == {
        "proxy_protocol": True,
        "proxy_trusted": ["10.0.0.0/8", "::1"],
    }
    for text, message in [
        ('proxy_protocol = "yes"\n', "key 'proxy_protocol': expected true or false"),
        ('proxy_trusted = ["10.0.0.0/33"]\n', "key 'proxy_trusted': entry '10.0.0.0/33'"),
        ('proxy_trusted = "10.0.0.0/8"\n', "key 'proxy_trusted': expected a list of strings"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config_file(path)
        assert str(path) in str(info.value)
        assert message in str(info.value)


def test_empty_trusted_list_in_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("proxy_protocol = true\nproxy_trusted = []\n")
    assert_one_line_error(run_cli("check-config", str(path)), "proxy_trusted is empty")


def test_argparse_type_error_is_specific() -> None:
    from trio_tls_dtls.cli.flag_values import network_list

    assert network_list("10.0.0.0/8,::1") == ["10.0.0.0/8", "::1"]
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not an IP address"):
        network_list("10.0.0.0/8,x")
