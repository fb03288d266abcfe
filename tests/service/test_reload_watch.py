"""Reloads without a signal, and session tickets that survive reloads and rotate.

Against real servers on loopback. The Kubernetes case is built as the
kubelet builds it: a timestamped folder, ``..data`` linking to it, the
served names linking through ``..data``; an update is a new folder and one
``os.replace`` of a new ``..data`` link over the old one. Sessions are
offered with the library client's ``session=`` (``resume=False``: the
session cache neither offers nor keeps one by itself) and judged by
``PeerInfo.resumed``; a session is offered through the settings object that
made it (pyOpenSSL insists), and a full handshake uses a new one.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import PKIFiles
from tests.drivers.test_session_cache import KINDS, connect, echo
from tests.service.test_signals import serving_process, signal_self, wait_for
from tests.service.test_workers import SERVING, workers
from trio_tls_dtls import ClientSettings
from trio_tls_dtls.cli.dev_pki import Issued
from trio_tls_dtls.core.settings import CertificateSettings, ServerSettings
from trio_tls_dtls.service.file_watch import FileWatch, watched_files
from trio_tls_dtls.service.service import Service, serve

pytestmark = pytest.mark.timeout(90)

_stamps = count(1)


class SecretVolume:
    """A Kubernetes Secret volume in *folder*: ``server.pem``, ``server.key`` via ``..data``."""

    def __init__(self, folder: Path, issued: Issued) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.update(issued)
        for name in ("server.pem", "server.key"):
            (folder / name).symlink_to(f"..data/{name}")

    def update(self, issued: Issued, *, key_pem: bytes | None = None) -> None:
        """What the kubelet does: a new timestamped folder, then one atomic rename."""
        stamp = f"..2026_01_31_12_00_{next(_stamps):02d}.000000001"
        data = self.folder / stamp
        data.mkdir(mode=0o755)
        (data / "server.pem").write_bytes(issued.cert_pem)
        key = data / "server.key"
        key.write_bytes(key_pem if key_pem is not None else issued.key_pem)
        key.chmod(0o600)
        link = self.folder / "..data_tmp"
        link.symlink_to(stamp)
        os.replace(link, self.folder / "..data")

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server.key"

    def settings(self, **options: Any) -> ServerSettings:
        return ServerSettings(certificate=CertificateSettings(self.cert, self.key), **options)


async def session_and_serial(
    kind: str, port: int, client: ClientSettings, session: object = None
) -> tuple[Any, bool, int]:
    """Connect (offering *session*), echo, close: the new session, resumed, certificate serial."""
    conn = await connect(kind, port, client, session=session, resume=False)
    await echo(conn)
    await conn.aclose()
    info = conn.info
    assert info.certificate is not None  # a resumed session carries the first one's
    return conn.session, info.resumed, info.certificate.serial_number


def test_the_watch_sees_a_secret_update_once(pki: PKIFiles, tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "tls", pki.pki.server)
    watch = FileWatch(watched_files(volume.settings()))
    assert watch.changed() == []
    volume.update(pki.pki.issue_server())
    assert watch.changed() == [volume.cert, volume.key]
    assert watch.changed() == []  # the next look compares with this one
    volume.cert.unlink()  # gone is a change too, once
    assert watch.changed() == [volume.cert]
    assert watch.changed() == []


async def test_a_secret_update_reloads_without_a_signal_and_sessions_resume(
    pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    volume = SecretVolume(tmp_path / "tls", pki.pki.server)
    async with serving_process(volume.settings(reload_interval=0.05)) as running:
        service, port = running.service, running.service.port
        client = pki.client_settings()
        before = {
            kind: await session_and_serial(kind, port, client) for kind in ("tls-1.3", "dtls")
        }
        fresh = pki.pki.issue_server()
        volume.update(fresh)
        await wait_for(lambda: service.reloads == 1)
        for kind, (session, resumed, serial) in before.items():
            assert not resumed and serial == pki.pki.server.cert.serial_number
            _, resumed, _ = await session_and_serial(kind, port, client, session)
            assert resumed, f"{kind}: a session from before the reload did not resume"
            _, resumed, serial = await session_and_serial(kind, port, pki.client_settings())
            assert (resumed, serial) == (False, fresh.cert.serial_number)
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 0
    assert f"{volume.cert}, {volume.key} changed: reloading" in caplog.text


async def test_a_bad_update_keeps_the_old_certificate_and_is_logged_once(
    pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = SecretVolume(tmp_path / "tls", pki.pki.server)
    async with serving_process(volume.settings(reload_interval=0.02), dtls=False) as running:
        service, port = running.service, running.service.port
        fresh = pki.pki.issue_server()
        volume.update(fresh, key_pem=pki.pki.issue_server().key_pem)  # not this cert's key
        await wait_for(lambda: service.reloads_failed == 1)
        await trio.sleep(0.3)  # fifteen more looks at the same (bad) files
        assert (service.reloads, service.reloads_failed) == (0, 1)
        _, _, serial = await session_and_serial("tls-1.3", port, pki.client_settings())
        assert serial == pki.pki.server.cert.serial_number
        volume.update(fresh)  # fixed: the next look reloads
        await wait_for(lambda: service.reloads == 1)
        _, _, serial = await session_and_serial("tls-1.3", port, pki.client_settings())
        assert serial == fresh.cert.serial_number
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 0
    failures = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert len(failures) == 1, failures
    assert "server.key" in failures[0].getMessage()


def server_settings(pki: PKIFiles, kind: str, **options: Any) -> ServerSettings:
    if kind.startswith("tls-"):
        options.update(max_version=kind.removeprefix("tls-"))
    return pki.server_settings(**options)


@pytest.mark.parametrize("kind", KINDS)
async def test_sessions_survive_a_reload_and_one_rotation_but_not_two(
    pki: PKIFiles, kind: str
) -> None:
    tls, dtls = kind != "dtls", kind == "dtls"
    settings = server_settings(pki, kind)
    async with trio.open_nursery() as nursery:
        service: Service = await nursery.start(
            partial(serve, settings, 0, host="127.0.0.1", tls=tls, dtls=dtls)
        )
        port, client = service.port, pki.client_settings()

        async def resumes(session: object) -> bool:
            _, resumed, _ = await session_and_serial(kind, port, client, session)
            return resumed

        session, resumed, _ = await session_and_serial(kind, port, client)
        assert not resumed
        assert service.reload()
        assert await resumes(session)
        assert service.rotate_ticket_keys()
        assert await resumes(session)  # sealed with the previous key: still opens
        assert service.rotate_ticket_keys()
        assert not await resumes(session)  # two rotations on: a full handshake
        assert service.ticket_key_rotations == 2
        nursery.cancel_scope.cancel()


async def test_a_single_process_rotates_its_keys_on_schedule(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = pki.server_settings(ticket_key_rotation=0.05, reload_interval=0)
    async with serving_process(settings, dtls=False) as running:
        service = running.service
        await wait_for(lambda: service.ticket_key_rotations >= 2)
        assert service.reloads == 0  # a rotation is not a reload
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 0
    assert "rotated the session-ticket keys" in caplog.text


async def test_no_upkeep_when_turned_off(pki: PKIFiles, tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "tls", pki.pki.server)
    settings = volume.settings(reload_interval=0, ticket_key_rotation=0)
    async with serving_process(settings, dtls=False) as running:
        volume.update(pki.pki.issue_server())
        await trio.sleep(0.2)
        service = running.service
        assert (service.reloads, service.ticket_key_rotations) == (0, 0)
        signal_self(signal.SIGTERM)
        assert await running.exit_status() == 0


# -- with --workers, the supervisor watches and rotates ------------------------------


async def test_workers_roll_on_a_secret_update_and_keep_the_ticket_keys(
    pki: PKIFiles, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "tls", pki.pki.server)
    flags = ["--cert", str(volume.cert), "--key", str(volume.key), "--tls-only"]
    async with workers(*flags, "--reload-interval", "0.2") as running:
        client = pki.client_settings()
        session, _, _ = await session_and_serial("tls-1.3", running.port, client)
        fresh = pki.pki.issue_server()
        volume.update(fresh)
        await running.read_until(re.compile(rb"server\.key changed: reloading"))
        await running.read_until(SERVING, 4)  # a new generation of two
        await running.read_until(re.compile(rb": drained:"), 2)  # the old one drained
        for _ in range(4):  # whichever new worker the kernel picks
            _, resumed, _ = await session_and_serial("tls-1.3", running.port, client, session)
            assert resumed, "a session from before the roll did not resume on a new worker"
            _, _, serial = await session_and_serial("tls-1.3", running.port, pki.client_settings())
            assert serial == fresh.cert.serial_number
        # A bad update keeps the workers, and is logged once.
        volume.update(fresh, key_pem=b"garbage\n")
        await running.read_until(re.compile(rb"reload failed, keeping the running workers"))
        await trio.sleep(1.0)  # five more looks
        running.process.send_signal(signal.SIGTERM)
        log = await running.wait_exit()
    assert log.count("reload failed") == 1, log
    assert log.count(": serving") == 4, log


async def test_workers_rotate_the_ticket_keys_on_schedule(pki: PKIFiles) -> None:
    flags = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), "--tls-only"]
    # Long enough that the next rotation (another roll) does not meet the check.
    async with workers(*flags, "--ticket-key-rotation", "4") as running:
        client = pki.client_settings()
        session, _, _ = await session_and_serial("tls-1.3", running.port, client)
        await running.read_until(re.compile(rb"session-ticket keys due to rotate: reloading"))
        await running.read_until(SERVING, 4)
        await running.read_until(re.compile(rb": drained:"), 2)
        _, resumed, _ = await session_and_serial("tls-1.3", running.port, client, session)
        assert resumed, "the previous key no longer opens a ticket after one rotation"
        running.process.send_signal(signal.SIGTERM)
        await running.wait_exit()
