"""Client identity rules (subject and SAN allow-lists), CRLs, and strict ALPN, in memory.

Every refusal must happen *during* the handshake: the server's engine raises
HandshakeError with our reason, and the client gets an alert.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import PKIFiles
from tests.core.test_engine import handshake, make_pair, transfer
from tests.identity_certs import issue_client_cert, write_crl
from trio_tls_dtls.core.client_identity import ClientIdentityRules, load_crls
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import ConfigError, HandshakeError, TLSError
from trio_tls_dtls.core.settings import CertificateSettings, ServerSettings

SPIFFE = "spiffe://prod.example.org/ns/web/sa/api"


# -- the rules as values --------------------------------------------------------------


@pytest.fixture(scope="module")
def api_cert(pki: PKIFiles) -> x509.Certificate:
    cert, _ = issue_client_cert(pki, "api", dns=["api.clients.example.com"], uris=[SPIFFE])
    return cert


@pytest.mark.parametrize(
    ("subjects", "sans", "admitted"),
    [
        (["CN=api,O=test clients"], [], True),
        (["CN=api,O=test\\20clients"], [], True),  # compared as names, not strings
        (["O=test clients,CN=api"], [], False),  # attribute order matters
        (["CN=api"], [], False),
        ([], ["api.clients.example.com"], True),
        ([], ["API.Clients.Example.COM."], True),
        ([], ["*.clients.example.com"], True),
        ([], ["*.example.com"], False),  # one label only
        ([], [SPIFFE], True),
        ([], ["spiffe://prod.example.org/ns/web/*"], True),
        ([], ["spiffe://prod.example.org/*"], True),
        ([], ["spiffe://prod.example.org/ns/we/*"], False),  # whole segments
        ([], ["spiffe://staging.example.org/*"], False),
        ([], [SPIFFE + "/more"], False),
        (["CN=other"], ["other.example.com", SPIFFE], True),  # any entry of either list
    ],
)
def test_rule_matching(
    api_cert: x509.Certificate, subjects: list[str], sans: list[str], admitted: bool
) -> None:
    rules = ClientIdentityRules.parse(subjects, sans)
    assert (rules(api_cert) is None) is admitted


def test_refusal_names_what_the_certificate_had(api_cert: x509.Certificate) -> None:
    reason = ClientIdentityRules.parse(["CN=someone"], [])(api_cert)
    assert reason == (
        "client certificate not allowed: subject 'CN=api,O=test clients', SANs "
        f"[DNS:api.clients.example.com, URI:{SPIFFE}] match no "
        "allow_client_subjects/allow_client_sans entry"
    )


@pytest.mark.parametrize(
    ("subjects", "sans", "message"),
    [
        (["not a subject"], [], "allow_client_subjects: cannot parse 'not a subject': expected"),
        (["O = test clients, CN = api"], [], "expected RFC 4514 like CN=web,O=Example"),
        ([""], [], "allow_client_subjects: '' is not a subject"),
        ("CN=x", [], "allow_client_subjects must be a list"),
        ([], "a.example.com", "allow_client_sans must be a list"),
        ([], ["spiffe://td/*/x"], r"a URI may only end in '/\*'"),
        ([], ["spiffe://td/x*"], r"a URI may only end in '/\*'"),
        ([], ["a.*.example.com"], "a DNS name may only start with '\\*.'"),
        ([], ["*example.com"], "a DNS name may only start with '\\*.'"),
        ([], [" padded.example.com"], "is not a DNS name or a URI"),
    ],
)
def test_bad_rules_are_refused(subjects: object, sans: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientIdentityRules.parse(subjects, sans)  # type: ignore[arg-type]


def test_rules_need_required_client_certificates(pki: PKIFiles) -> None:
    with pytest.raises(ConfigError, match="need verify_client=required"):
        pki.mtls_server_settings(verify_client="optional", allow_client_sans=[SPIFFE])
    with pytest.raises(ConfigError, match="crl_file needs verify_client"):
        pki.server_settings(crl_file=pki.dir / "x.crl")


# -- rules in handshakes ------------------------------------------------------------------


def mtls_pair(
    pki: PKIFiles, cert: CertificateSettings, version: str, **server: object
) -> tuple[TLSEngine, TLSEngine]:
    settings = pki.mtls_server_settings(min_version=version, max_version=version, **server)
    client_ctx = build_client_context(pki.client_settings(certificate=cert))
    return TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(
        build_server_context(settings)
    )


def refused(client: TLSEngine, server: TLSEngine) -> tuple[str, str]:
    """(server's reason, client's reason): the client hears it as an alert."""
    with pytest.raises(HandshakeError) as on_server:
        handshake(client, server)
    client.receive_bytes(server.bytes_to_send())
    with pytest.raises(TLSError) as on_client:
        # TLS 1.2: still in the handshake. TLS 1.3: the client has finished
        # its side; the alert comes with its first read.
        client.do_handshake()
        client.receive(10)
    return on_server.value.reason, on_client.value.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_spiffe_rule_admits_and_refuses_in_the_handshake(pki: PKIFiles, version: str) -> None:
    _, api = issue_client_cert(pki, "api", uris=[SPIFFE])
    _, batch = issue_client_cert(pki, "batch", uris=["spiffe://prod.example.org/ns/batch/sa/x"])
    rule = {"allow_client_sans": ["spiffe://prod.example.org/ns/web/*"]}

    client, server = mtls_pair(pki, api, version, **rule)
    handshake(client, server)
    assert server.peer_info(None).subject == "CN=api,O=test clients"

    server_reason, client_reason = refused(*mtls_pair(pki, batch, version, **rule))
    assert server_reason.startswith("client certificate not allowed: subject 'CN=batch,")
    assert "URI:spiffe://prod.example.org/ns/batch/sa/x" in server_reason
    assert client_reason == "tls alert handshake failure"


def test_subject_rule_with_the_dev_client(pki: PKIFiles) -> None:
    dev = CertificateSettings(pki.client_cert, pki.client_key)
    allowed = {"allow_client_subjects": ["CN=trio-tlsd client,O=trio-tlsd development"]}
    client, server = mtls_pair(pki, dev, "1.3", **allowed)
    handshake(client, server)
    server_reason, _ = refused(*mtls_pair(pki, dev, "1.3", allow_client_subjects=["CN=x"]))
    assert "subject 'CN=trio-tlsd client,O=trio-tlsd development'" in server_reason


def test_rules_hold_on_every_sni_context(pki: PKIFiles) -> None:
    sni = pki.write_issued("sni-id", pki.pki.issue_server(["sni.example.com"]))
    sni = CertificateSettings(sni.cert_file, sni.key_file, server_names=("sni.example.com",))
    _, batch = issue_client_cert(pki, "batch-sni", uris=["spiffe://prod.example.org/ns/b/x"])
    settings = pki.mtls_server_settings(sni_certificates=(sni,), allow_client_sans=[SPIFFE])
    client_ctx = build_client_context(pki.client_settings(certificate=batch))
    client = TLSEngine.client(client_ctx, "sni.example.com")
    server_reason, _ = refused(client, TLSEngine.server(build_server_context(settings)))
    assert server_reason.startswith("client certificate not allowed")


# -- CRLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("der", [False, True])
def test_revoked_client_is_refused(pki: PKIFiles, tmp_path: Path, der: bool) -> None:
    revoked_cert, revoked = issue_client_cert(pki, "revoked")
    _, good = issue_client_cert(pki, "good")
    crl = write_crl(pki, tmp_path / "ca.crl", [revoked_cert], der=der)

    client, server = mtls_pair(pki, good, "1.3", crl_file=crl)
    handshake(client, server)
    server_reason, client_reason = refused(*mtls_pair(pki, revoked, "1.3", crl_file=crl))
    assert server_reason == "certificate verify failed (certificate revoked)"
    assert client_reason == "tls alert certificate revoked"


def test_crl_file_is_read_at_each_build(pki: PKIFiles, tmp_path: Path) -> None:
    cert, settings = issue_client_cert(pki, "later-revoked")
    crl = write_crl(pki, tmp_path / "ca.crl")
    server = pki.mtls_server_settings(crl_file=crl)
    before = build_server_context(server)
    write_crl(pki, crl, [cert])
    after = build_server_context(server)
    client_ctx = build_client_context(pki.client_settings(certificate=settings))
    handshake(TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(before))
    with pytest.raises(HandshakeError, match="certificate revoked"):
        handshake(TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(after))


def test_bad_crl_files(pki: PKIFiles, other_pki: PKIFiles, tmp_path: Path) -> None:
    cas = [pki.pki.ca.cert]
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not a CRL")
    with pytest.raises(ConfigError, match=f"crl_file {garbage} holds no valid CRL"):
        load_crls(garbage, cas)
    foreign = write_crl(other_pki, tmp_path / "other.crl")
    with pytest.raises(ConfigError, match=r"CRL of 'CN=some other CA,.*' is from no CA in ca_file"):
        load_crls(foreign, cas)
    expired = write_crl(
        pki,
        tmp_path / "old.crl",
        next_update=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
    )
    with pytest.raises(
        ConfigError, match=r"expired on .* \(every client would be refused\); fetch a fresh one"
    ):
        load_crls(expired, cas)
    with pytest.raises(ConfigError, match="crl_file not found"):
        load_crls(tmp_path / "missing.crl", cas)


def test_several_crls_in_one_pem_file(pki: PKIFiles, other_pki: PKIFiles, tmp_path: Path) -> None:
    both = tmp_path / "both.crl"
    both.write_bytes(
        write_crl(pki, tmp_path / "a.crl").read_bytes()
        + write_crl(other_pki, tmp_path / "b.crl").read_bytes()
    )
    assert len(load_crls(both, [pki.pki.ca.cert, other_pki.pki.ca.cert])) == 2


# -- ALPN as RFC 7301 says --------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_alpn_without_overlap_ends_the_handshake(pki: PKIFiles, version: str) -> None:
    versions = {"min_version": version, "max_version": version}
    client, server = make_pair(
        pki, server_opts={"alpn": ("h2", "echo/1"), **versions}, client_opts={"alpn": ("x", "y")}
    )
    with pytest.raises(HandshakeError) as on_server:
        handshake(client, server)
    assert on_server.value.reason == (
        "no application protocol in common (ALPN): client offered 'x','y', server has h2,echo/1"
    )
    transfer(server, client)
    with pytest.raises(HandshakeError, match="no application protocol"):
        client.do_handshake()


def test_client_without_alpn_is_not_asked(pki: PKIFiles) -> None:
    client, server = make_pair(pki, server_opts={"alpn": ("h2",)})
    handshake(client, server)
    assert server.peer_info(None).alpn is None


def test_server_preference_wins(pki: PKIFiles) -> None:
    client, server = make_pair(
        pki, server_opts={"alpn": ("echo/1", "h2")}, client_opts={"alpn": ("h2", "echo/1")}
    )
    handshake(client, server)
    assert client.peer_info(None).alpn == server.peer_info(None).alpn == "echo/1"


def test_server_settings_certificate_is_optional_only_with_psk(pki: PKIFiles) -> None:
    with pytest.raises(ConfigError, match="sni_certificates need a default certificate"):
        ServerSettings(
            psk_keys={"a": bytes(16)}, sni_certificates=(pki.server_settings().certificate,)
        )
