"""The private-key permission warning: others may never read it; our own group may."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import PKIFiles
from trio_tls_dtls.core.pem_files import load_certificate

# A group this process is not in (root is in few): nobody's group.
FOREIGN_GID = 65534 if 65534 not in (os.getegid(), *os.getgroups()) else 65533


def copy_key(pki: PKIFiles, tmp_path: Path, mode: int, gid: int | None = None) -> Path:
    key = tmp_path / "server.key"
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(mode)
    if gid is not None:
        os.chown(key, -1, gid)
    return key


def warnings_for(key: Path, pki: PKIFiles, caplog: pytest.LogCaptureFixture) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="trio_tls_dtls.core.pem_files"):
        load_certificate(pki.server_cert, key)
    return [r.getMessage() for r in caplog.records if "readable by other users" in r.getMessage()]


def test_0600_is_quiet(pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert warnings_for(copy_key(pki, tmp_path, 0o600), pki, caplog) == []


def test_readable_by_others_warns(
    pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = copy_key(pki, tmp_path, 0o644)
    (line,) = warnings_for(key, pki, caplog)
    assert str(key) in line and "mode 644" in line


def test_our_own_group_may_read(
    pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Kubernetes Secret mounted 0440 with the pod's fsGroup.
    key = copy_key(pki, tmp_path, 0o440, gid=os.getegid())
    assert warnings_for(key, pki, caplog) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to a foreign group needs root")
def test_a_foreign_group_may_not(
    pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = copy_key(pki, tmp_path, 0o440, gid=FOREIGN_GID)
    assert len(warnings_for(key, pki, caplog)) == 1
