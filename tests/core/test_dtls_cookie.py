"""Stateless cookies: what verifies, what does not, rotation, shared secrets, secret files."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import PKIFiles
from tests.core.dtls_pair import first_client_hello
from trio_tls_dtls.core.dtls_cookie import COOKIE_SIZE, CookieSecrets, write_secret_file
from trio_tls_dtls.core.dtls_records import ClientHello, parse_client_hello
from trio_tls_dtls.core.errors import CookieError

ADDRESS = ("192.0.2.7", 5684)
NOW = 1_800_000_000.0
INTERVAL = 60.0


@pytest.fixture(scope="module")
def hello(pki: PKIFiles) -> ClientHello:
    return parse_client_hello(first_client_hello(pki)[1])


@pytest.fixture
def secrets() -> CookieSecrets:
    return CookieSecrets.random(rotation_interval=INTERVAL)


def test_cookie_verifies_for_same_peer_and_hello(
    secrets: CookieSecrets, hello: ClientHello
) -> None:
    cookie = secrets.generate(ADDRESS, hello, NOW)
    assert len(cookie) == COOKIE_SIZE
    assert secrets.verify(cookie, ADDRESS, hello, NOW)
    assert secrets.generate(ADDRESS, hello, NOW) == cookie  # stateless: recomputed


@pytest.mark.parametrize("address", [("192.0.2.8", 5684), ("192.0.2.7", 5685), ("::1", 5684)])
def test_wrong_address(
    secrets: CookieSecrets, hello: ClientHello, address: tuple[str, int]
) -> None:
    cookie = secrets.generate(ADDRESS, hello, NOW)
    assert not secrets.verify(cookie, address, hello, NOW)


def test_different_client_hello(pki: PKIFiles, secrets: CookieSecrets, hello: ClientHello) -> None:
    other = parse_client_hello(first_client_hello(pki)[1])  # another random
    cookie = secrets.generate(ADDRESS, hello, NOW)
    assert not secrets.verify(cookie, ADDRESS, other, NOW)


def test_every_tampered_byte_is_rejected(secrets: CookieSecrets, hello: ClientHello) -> None:
    cookie = secrets.generate(ADDRESS, hello, NOW)
    for index in range(len(cookie)):
        for flip in (0x01, 0x80):
            tampered = bytearray(cookie)
            tampered[index] ^= flip
            assert not secrets.verify(bytes(tampered), ADDRESS, hello, NOW)
    assert not secrets.verify(cookie[:-1], ADDRESS, hello, NOW)
    assert not secrets.verify(cookie + b"\x00", ADDRESS, hello, NOW)


def test_rotation_accepts_the_previous_secret_only(
    secrets: CookieSecrets, hello: ClientHello
) -> None:
    start = secrets.epoch(NOW) * INTERVAL  # the first second of an epoch
    cookie = secrets.generate(ADDRESS, hello, start)
    assert secrets.verify(cookie, ADDRESS, hello, start + INTERVAL - 0.001)
    assert secrets.verify(cookie, ADDRESS, hello, start + INTERVAL)  # rotated, still accepted
    assert secrets.verify(cookie, ADDRESS, hello, start + 2 * INTERVAL - 0.001)
    assert not secrets.verify(cookie, ADDRESS, hello, start + 2 * INTERVAL)  # expired
    assert not secrets.verify(cookie, ADDRESS, hello, start + 300 * INTERVAL)
    # Each epoch has its own key.
    assert secrets.generate(ADDRESS, hello, start + INTERVAL) != cookie


def test_clock_skew_of_one_interval_is_tolerated(
    secrets: CookieSecrets, hello: ClientHello
) -> None:
    cookie = secrets.generate(ADDRESS, hello, NOW + INTERVAL)  # a host running ahead
    assert secrets.verify(cookie, ADDRESS, hello, NOW)
    ahead = secrets.generate(ADDRESS, hello, NOW + 2 * INTERVAL)
    assert not secrets.verify(ahead, ADDRESS, hello, NOW)


def test_secret_shared_between_endpoints(tmp_path: Path, hello: ClientHello) -> None:
    path = write_secret_file(tmp_path / "cookie.key")
    one = CookieSecrets.from_file(path)
    two = CookieSecrets.from_file(path)
    stranger = CookieSecrets.random()
    cookie = one.generate(ADDRESS, hello, NOW)
    assert two.verify(cookie, ADDRESS, hello, NOW)
    assert two.verify(cookie, ADDRESS, hello, NOW + 60)
    assert not stranger.verify(cookie, ADDRESS, hello, NOW)


def test_secret_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = write_secret_file(tmp_path / "cookie.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(CookieError, match="already exists"):
        write_secret_file(path)
    assert path.read_bytes() == before
    write_secret_file(path, overwrite=True)
    assert path.read_bytes() != before


@pytest.mark.parametrize("encode", [bytes.hex, lambda b: base64.b64encode(b).decode(), None])
def test_secret_file_formats(tmp_path: Path, hello: ClientHello, encode: object) -> None:
    master = os.urandom(48)
    path = tmp_path / "secret"
    if encode is None:
        path.write_bytes(master)
    else:
        path.write_text(encode(master) + "\n")  # type: ignore[operator]
    cookie = CookieSecrets(master).generate(ADDRESS, hello, NOW)
    assert CookieSecrets.from_file(path).verify(cookie, ADDRESS, hello, NOW)


def test_secret_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(CookieError, match=f"not found: {missing}"):
        CookieSecrets.from_file(missing)
    short = tmp_path / "short.key"
    short.write_text("00" * 16)
    with pytest.raises(CookieError, match=rf"{short} holds 16 bytes.*at least 32"):
        CookieSecrets.from_file(short)
    with pytest.raises(CookieError, match="rotation"):
        CookieSecrets.random(rotation_interval=0)


@settings(max_examples=300, deadline=None)
@given(cookie=st.binary(max_size=40), now=st.floats(0, 4e9))
def test_fuzz_verify_never_raises(hello: ClientHello, cookie: bytes, now: float) -> None:
    secrets = CookieSecrets(bytes(32))
    assert secrets.verify(cookie, ADDRESS, hello, now) is False
