"""Shared fixtures: a development PKI made once per test run, and a trio runner.

Async tests run under trio via a small hook rather than a plugin, so the test
suite works unchanged on every trio version in the nox matrix. Each async
test gets a generous hard deadline so a hang fails instead of stalling CI.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from trio_tls_dtls.cli.dev_pki import DevPKI, Issued, make_dev_pki, write_dev_pki
from trio_tls_dtls.core.settings import CertificateSettings, ClientSettings, ServerSettings

ASYNC_TEST_TIMEOUT = 60.0

# Hypothesis profiles. "ci" (the default) keeps the fuzz tests in tests/core/fuzz
# to a few seconds; "deep" (HYPOTHESIS_PROFILE=deep, as `nox -s fuzz` sets)
# runs 8,000 examples per test, about 7 minutes in all. Tests that pin
# max_examples keep their own.
hypothesis_settings.register_profile("ci", max_examples=150, deadline=None, print_blob=True)
hypothesis_settings.register_profile(
    "deep",
    max_examples=8_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    marker = pyfuncitem.get_closest_marker("timeout")
    limit = marker.args[0] if marker else ASYNC_TEST_TIMEOUT

    async def run() -> None:
        with trio.fail_after(limit):
            await func(**kwargs)

    trio.run(run)
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): hard deadline for an async test")


@dataclass(frozen=True)
class PKIFiles:
    """A development PKI on disk, plus helpers to make settings from it."""

    pki: DevPKI
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def server_settings(self, **options: Any) -> ServerSettings:
        return ServerSettings(
            certificate=CertificateSettings(self.server_cert, self.server_key), **options
        )

    def mtls_server_settings(self, **options: Any) -> ServerSettings:
        options.setdefault("verify_client", "required")
        return self.server_settings(ca_file=self.ca, **options)

    def client_settings(self, *, with_cert: bool = False, **options: Any) -> ClientSettings:
        if with_cert:
            options["certificate"] = CertificateSettings(self.client_cert, self.client_key)
        return ClientSettings(ca_file=self.ca, **options)

    def write_issued(self, name: str, issued: Issued) -> CertificateSettings:
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        return CertificateSettings(cert, key)


def _make_files(tmp_path_factory: pytest.TempPathFactory, name: str, **kw: Any) -> PKIFiles:
    folder = tmp_path_factory.mktemp(name)
    pki = make_dev_pki(**kw)
    write_dev_pki(folder, pki)
    return PKIFiles(pki, folder)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """An ECDSA P-256 development PKI, made once per run."""
    return _make_files(tmp_path_factory, "pki")


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """An RSA-2048 development PKI."""
    return _make_files(tmp_path_factory, "rsa-pki", key_type="rsa")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """A second, unrelated CA: its certificates must be refused by the first."""
    return _make_files(tmp_path_factory, "other-pki", ca_name="some other CA")


def sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async helper to completion from sync code (used by a few tests)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper
