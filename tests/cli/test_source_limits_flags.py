"""Per-source limits from serve flags and config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls import (
    ConfigError,
    ServerSettings,
)
from trio_tls_dtls.cli.config_file import load_config_file
from trio_tls_dtls.cli.main import build_parser
from trio_tls_dtls.cli.serve_settings import serve_options, settings_from

FLOODER, VICTIM = "127.0.0.2", "127.0.0.3"

# -- the sans-IO bucket --------------------------------------------------------------


def test_config_file_keys(tmp_path: Path) -> None:
    path = tmp_path / "tlsd.toml"
    path.write_text(
        "per_source_rate = 5\nper_source_burst = 10\n"
        'per_source_connections = 0\nper_source_exempt = ["10.0.0.0/8"]\n'
    )
    options = load_config_file(path)
    assert options["per_source_rate"] == 5.0
    assert options["per_source_burst"] == 10
    assert options["per_source_connections"] == 0
    assert options["per_source_exempt"] == ["10.0.0.0/8"]
    path.write_text('per_source_exempt = ["10.0.0.0/8", "bogus"]\n')
    with pytest.raises(ConfigError, match=r"per_source_exempt.*bogus"):
        load_config_file(path)


def test_serve_flags_reach_the_settings(pki: PKIFiles) -> None:
    def settings_for(*flags: str) -> ServerSettings:
        args = build_parser().parse_args(
            ["serve", "--cert", str(pki.server_cert), "--key", str(pki.server_key), *flags]
        )
        return settings_from(serve_options(args), make_dev_pki=False)[0]

    default = settings_for()
    assert (default.per_source_rate, default.per_source_burst) == (50.0, 100)
    assert default.per_source_connections == 256
    assert default.per_source_exempt == ("127.0.0.0/8", "::1/128")
    given = settings_for(
        "--per-source-rate",
        "2.5",
        "--per-source-burst",
        "7",
        "--per-source-connections",
        "0",
        "--per-source-exempt",
        "none",
    )
    assert (given.per_source_rate, given.per_source_burst) == (2.5, 7)
    assert given.per_source_connections == 0
    assert given.per_source_exempt == ()
