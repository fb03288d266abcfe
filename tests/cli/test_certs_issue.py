"""The development PKI grows: ``certs`` keeps the CA key, ``certs issue`` signs more from it.

Also ``cookie-secret -`` and ``cookie-secret /dev/stdout``, which print the
secret (the deploy guide pipes it into a Kubernetes Secret).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cli.test_cli import CLI, EMPTY_DIR, assert_one_line_error, run_cli
from trio_tls_dtls import CookieSecrets
from trio_tls_dtls.cli.main import main


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    assert main(["certs", "--dir", str(folder)]) == 0
    return folder


def test_certs_keeps_the_ca_key_private(certs: Path) -> None:
    key = certs / "ca.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()


def test_certs_without_subcommand_still_refuses_to_overwrite(certs: Path) -> None:
    result = run_cli("certs", "--dir", str(certs))
    assert_one_line_error(result, "already holds", "ca.key", "--force")


def test_issue_a_server_certificate(certs: Path) -> None:
    result = run_cli(
        "certs", "issue", "api.example.com", "--san", "*.api.example.com", "--dir", str(certs)
    )
    assert result.returncode == 0, result.stderr
    cert_path, key_path = certs / "api.example.com.pem", certs / "api.example.com.key"
    assert result.stdout.split() == [str(cert_path), str(key_path)]
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = load(cert_path)
    assert common_name(cert) == "api.example.com"
    assert sans(cert) == ["api.example.com", "*.api.example.com"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(load(certs / "ca.pem"))  # raises if not


def test_issue_a_client_certificate_with_a_spiffe_id(certs: Path) -> None:
    # --dir before "issue" works as well as after it.
    assert main(["certs", "--dir", str(certs), "issue", "alice", "--client",
                 "--san", "spiffe://example.org/alice"]) == 0  # fmt: skip
    cert = load(certs / "alice.pem")
    assert common_name(cert) == "alice"
    assert sans(cert) == ["spiffe://example.org/alice"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(load(certs / "ca.pem"))  # raises if not


def test_issue_names_wildcards_and_key_types(certs: Path) -> None:
    assert main(["certs", "issue", "*.example.net", "--dir", str(certs), "--key-type", "rsa"]) == 0
    cert = load(certs / "wildcard.example.net.pem")
    assert sans(cert) == ["*.example.net"]
    assert not isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert main(["certs", "issue", "ec.example", "--dir", str(certs)]) == 0
    assert isinstance(load(certs / "ec.example.pem").public_key(), ec.EllipticCurvePublicKey)


def test_issue_refuses_to_overwrite(certs: Path) -> None:
    before = (certs / "server.pem").read_bytes()
    result = run_cli("certs", "issue", "server", "--dir", str(certs))
    assert_one_line_error(result, str(certs / "server.pem"), "already exist", "--force")
    assert (certs / "server.pem").read_bytes() == before
    assert main(["certs", "issue", "server", "--dir", str(certs), "--force"]) == 0
    assert (certs / "server.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("remove", "fragments"),
    [
        ("ca.key", ["ca.key not found", "--force"]),
        ("ca.pem", ["ca.pem not found", "trio-tlsd certs --dir"]),
    ],
)
def test_issue_without_the_ca(certs: Path, remove: str, fragments: list[str]) -> None:
    (certs / remove).unlink()
    result = run_cli("certs", "issue", "api.example.com", "--dir", str(certs))
    assert_one_line_error(result, str(certs / remove), *fragments[1:])
    assert not (certs / "api.example.com.pem").exists()


def test_issue_with_a_key_that_is_not_the_cas(certs: Path, tmp_path: Path) -> None:
    (certs / "ca.key").write_bytes((certs / "server.key").read_bytes())
    result = run_cli("certs", "issue", "x.example", "--dir", str(certs))
    assert_one_line_error(result, "does not match CA certificate", str(certs / "ca.key"))
    (certs / "ca.key").write_text("not a key\n")
    assert_one_line_error(run_cli("certs", "issue", "x.example", "--dir", str(certs)), "CA key")


def test_issue_refuses_names_that_are_not_file_names(certs: Path) -> None:
    result = run_cli("certs", "issue", "../up", "--dir", str(certs))
    assert_one_line_error(result, "cannot name a file")


def test_serve_accepts_an_old_folder_without_ca_key(certs: Path) -> None:
    """A certs/ folder made before the CA key was kept still serves (check-config loads it)."""
    (certs / "ca.key").unlink()
    config = certs.parent / "serve.toml"
    config.write_text('verify_client = "required"\n')
    result = run_cli("check-config", str(config), cwd=certs.parent)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_cookie_secret_to_stdout(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "cookie-secret", target],
        cwd=EMPTY_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    secret = result.stdout
    assert len(secret) == 65 and secret.endswith("\n")
    int(secret, 16)
    saved = tmp_path / "cookie.key"
    saved.write_text(secret)
    CookieSecrets.from_file(saved)  # what serve --cookie-secret-file reads
    assert not (EMPTY_DIR / "-").exists()
