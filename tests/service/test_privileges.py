"""serve --user/--group: bind as root, then drop to the user before serving anyone."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from tests.cli.test_cli import (
    CLI,
    _read_until,
    _read_until_exit,
    assert_one_line_error,
    run_cli,
    serving_without_stop,
)
from tests.conftest import PKIFiles
from trio_tls_dtls import Service, open_dtls_channel, open_tls_stream
from trio_tls_dtls.core.errors import ConfigError
from trio_tls_dtls.service.privileges import lookup_identity, resolve_identity

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="binding a port below 1024 and switching users need root"
)
NOBODY = pwd.getpwnam("nobody")


def free_privileged_port() -> int:
    """A port below 1024 that is free on 127.0.0.1 for both TCP and UDP (needs root)."""
    for port in range(900, 1024):
        try:
            with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port in 900-1023")


def ids(pid: int) -> dict[str, list[int]]:
    """The Uid and Gid lines of /proc/PID/status: real, effective, saved, filesystem."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


def cert_flags(pki: PKIFiles) -> list[str]:
    return ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]


async def echo_both(pki: PKIFiles, port: int) -> None:
    settings = pki.client_settings()
    stream = await open_tls_stream(
        "127.0.0.1", port, settings=settings, server_hostname="localhost"
    )
    await stream.send_all(b"tls\n")
    assert await stream.receive_some() == b"tls\n"
    await stream.aclose()
    channel = await open_dtls_channel(
        "127.0.0.1", port, settings=settings, server_hostname="localhost"
    )
    await channel.send(b"dtls")
    assert await channel.receive() == b"dtls"
    await channel.aclose()


@needs_root
async def test_serve_drops_to_nobody_after_binding_a_privileged_port(pki: PKIFiles) -> None:
    port = free_privileged_port()
    flags = [*cert_flags(pki), "--port", str(port), "--user", "nobody"]
    async with serving_without_stop(*flags) as (process, banner):
        assert f"tcp 127.0.0.1:{port}" in banner and f"udp 127.0.0.1:{port}" in banner
        assert "dropped privileges: now uid 65534 (nobody)" in banner
        found = ids(process.pid)
        assert found["Uid"] == [NOBODY.pw_uid] * 4, found
        assert found["Gid"] == [NOBODY.pw_gid] * 4, found
        assert 0 not in found["Groups"], found
        await echo_both(pki, port)
        # The key lives in a root-only folder: a reload as nobody fails, and says
        # why, while the certificates read as root stay in use.
        process.send_signal(signal.SIGHUP)
        log = await _read_until(process, b"reload failed")
        assert b"permission denied" in log, log
        await echo_both(pki, port)
        process.send_signal(signal.SIGINT)
        rest = await _read_until_exit(process)
        assert process.returncode == 0, rest


@needs_root
async def test_each_worker_drops_and_the_supervisor_keeps_root(pki: PKIFiles) -> None:
    port = free_privileged_port()
    args = [*CLI, "serve", "--host", "127.0.0.1", *cert_flags(pki), "--port", str(port)]
    args += ["--workers", "2", "--user", "nobody", "--group", "nogroup"]
    process = await trio.lowlevel.open_process(
        args, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(30):
            while output.count(b": serving") < 2:
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        text = output.decode()
        workers = [int(part.split(")")[0]) for part in text.split("(pid ")[1:]]
        workers = sorted(set(workers))
        assert len(workers) == 2, text
        assert ids(process.pid)["Uid"] == [0] * 4  # the supervisor: root, to rebind on SIGHUP
        for pid in workers:
            assert ids(pid)["Uid"] == [NOBODY.pw_uid] * 4, pid
            assert ids(pid)["Gid"] == [grp_id("nogroup")] * 4, pid
        await echo_both(pki, port)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def grp_id(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def test_unknown_user_or_group_is_named(pki: PKIFiles) -> None:
    result = run_cli("serve", *cert_flags(pki), "--port", "0", "--user", "no-such-user-x")
    assert_one_line_error(result, "--user no-such-user-x: no such user")
    result = run_cli(
        "serve", *cert_flags(pki), "--port", "0", "--user", "nobody", "--group", "no-such-grp"
    )
    assert_one_line_error(result, "--group no-such-grp: no such group")
    result = run_cli("serve", *cert_flags(pki), "--port", "0", "--group", "nogroup")
    assert_one_line_error(result, "--group needs --user")


def test_config_file_user_keys(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "tlsd.toml"
    config.write_text(
        f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nuser = "nobody"\n'
        'group = "nogroup"\n'
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert 'user = "nobody"' in result.stdout and 'group = "nogroup"' in result.stdout
    config.write_text('user = "no-such-user-x"\n')
    assert_one_line_error(run_cli("check-config", str(config)), "no-such-user-x: no such user")


def test_lookup_accepts_names_and_ids() -> None:
    by_name = lookup_identity("nobody")
    assert (by_name.uid, by_name.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    by_id = lookup_identity(str(NOBODY.pw_uid), "0")
    assert (by_id.user, by_id.gid) == ("nobody", 0)


def test_user_without_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # As an ordinary user (uid 1000 here), becoming anyone else is refused, by name.
    # (A real unprivileged run is not possible here: this Python lives under /root.)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=r"--user nobody needs root .* runs as uid 1000"):
        resolve_identity("nobody")


def test_resolve_identity_is_a_no_op_for_the_current_user() -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    identity = resolve_identity(me, str(os.getegid()))
    assert identity.current


async def test_after_bind_failure_closes_the_sockets(pki: PKIFiles) -> None:
    service = Service(pki.server_settings())

    def refuse() -> None:
        raise ConfigError("no")

    with pytest.raises(ConfigError):
        await service.bind(0, "127.0.0.1", after_bind=refuse)
    port = service.port
    # Closed: the same TCP and UDP port can be bound again at once.
    again = Service(pki.server_settings())
    await again.bind(port, "127.0.0.1")
    assert again.port == port
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)  # run() closes its sockets when cancelled
        nursery.cancel_scope.cancel()
