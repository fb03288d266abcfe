"""Settings path fields: any path-like value in, a Path out (and the same object as before)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle
from pathlib import Path, PurePosixPath

import pytest

from trio_tls_dtls import CertificateSettings, ClientSettings, ServerSettings, VerifyClient
from trio_tls_dtls.core import settings as settings_module
from trio_tls_dtls.core.errors import ConfigError


class _PathLike:
    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


def test_strings_and_path_likes_become_paths() -> None:
    cert = CertificateSettings("server.pem", _PathLike("server.key"), ocsp_staple_file="o.der")
    assert cert.cert_file == Path("server.pem") and type(cert.cert_file) is type(Path())
    assert cert.key_file == Path("server.key")
    assert cert.ocsp_staple_file == Path("o.der")
    server = ServerSettings(
        certificate=cert, ca_file="ca.pem", keylog_file="k.log", cookie_secret_file="c.key"
    )
    assert (server.ca_file, server.keylog_file, server.cookie_secret_file) == (
        Path("ca.pem"),
        Path("k.log"),
        Path("c.key"),
    )
    identity = ServerSettings(
        certificate=cert,
        ca_file="ca.pem",
        verify_client=VerifyClient.REQUIRED,
        crl_file="crl.pem",
        psk_file="keys.psk",
    )
    assert (identity.crl_file, identity.psk_file) == (Path("crl.pem"), Path("keys.psk"))
    client = ClientSettings(ca_file="ca.pem", keylog_file=Path("k.log"))
    assert client.ca_file == Path("ca.pem") and client.keylog_file == Path("k.log")


def test_unset_optional_paths_are_none() -> None:
    cert = CertificateSettings("a", "b")
    server = ServerSettings(certificate=cert)
    assert server.ca_file is None and server.keylog_file is None
    assert server.psk_file is None and server.crl_file is None
    assert cert.ocsp_staple_file is None
    assert ClientSettings().ca_file is None


def test_equal_whatever_the_input_type() -> None:
    a = ServerSettings(certificate=CertificateSettings("a.pem", "a.key"), ca_file="ca.pem")
    b = ServerSettings(
        certificate=CertificateSettings(Path("a.pem"), PurePosixPath("a.key")),
        ca_file=Path("ca.pem"),
    )
    assert a == b
    assert hash(a.certificate) == hash(b.certificate)
    assert pickle.loads(pickle.dumps(a.certificate)) == a.certificate
    assert dataclasses.replace(a, ca_file="other.pem").ca_file == Path("other.pem")
    assert "cert_file=PosixPath('a.pem')" in repr(a.certificate)


def test_frozen_and_checked() -> None:
    cert = CertificateSettings("a.pem", "a.key")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.cert_file = Path("b.pem")  # type: ignore[misc]
    with pytest.raises(ConfigError, match="key_file must be a path, not int"):
        CertificateSettings("a.pem", 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ca_file must be a path, not bytes"):
        ClientSettings(ca_file=b"ca.pem")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key_file"):
        CertificateSettings("a.pem")  # type: ignore[call-arg]


def test_the_declared_init_of_certificate_settings_matches_its_fields() -> None:
    """The TYPE_CHECKING __init__ (what mypy sees) has the fields, in order, and their defaults."""
    tree = ast.parse(inspect.getsource(settings_module))
    (cls,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CertificateSettings"
    ]
    (stub,) = [n for n in ast.walk(cls) if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    declared = [a.arg for a in stub.args.args[1:]]
    runtime = inspect.signature(CertificateSettings).parameters
    assert declared == list(runtime)
    defaults = [ast.literal_eval(d) for d in stub.args.defaults]
    assert defaults == [p.default for p in runtime.values() if p.default is not p.empty]


def test_help_shows_what_path_fields_accept() -> None:
    """help() and the signature say str or os.PathLike, not the descriptor's name."""
    cert = inspect.signature(CertificateSettings).parameters
    assert cert["cert_file"].annotation == "str | os.PathLike[str]"
    assert cert["ocsp_staple_file"].annotation == "str | os.PathLike[str] | None"
    for cls in (ServerSettings, ClientSettings):
        params = inspect.signature(cls).parameters
        assert params["ca_file"].annotation == "str | os.PathLike[str] | None"
        assert params["keylog_file"].annotation == "str | os.PathLike[str] | None"
