"""Pre-shared keys: the PSK file, the settings, and PSK handshakes between two engines.

The handshakes run in memory (no sockets); the interop tests against
openssl and gnutls-cli are in tests/drivers/test_psk_interop.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PKIFiles
from tests.core.dtls_pair import CLIENT_ADDRESS, NOW
from tests.core.test_engine import handshake, transfer
from trio_tls_dtls.core.contexts import build_client_context, build_server_context
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine, TLSEngine
from trio_tls_dtls.core.errors import ConfigError, HandshakeError
from trio_tls_dtls.core.psk import PSKTable, load_psk_file
from trio_tls_dtls.core.settings import ClientSettings, ServerSettings

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def psk_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.psk"
    path.write_text(text)
    path.chmod(mode)
    return path


# -- the file ------------------------------------------------------------------------


def test_psk_file_lines_comments_and_colons_in_identities(tmp_path: Path) -> None:
    path = psk_file(
        tmp_path,
        "# devices\n\n"
        "sensor-1:00112233445566778899AABBCCDDEEFF\n"
        "  urn:dev:mac:0004a30b001a2b3c : ffeeddccbbaa99887766554433221100  \n",
    )
    assert load_psk_file(path) == {
        "sensor-1": KEY,
        "urn:dev:mac:0004a30b001a2b3c": OTHER_KEY,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sensor-1 00112233\n", "line 1: expected IDENTITY:HEXKEY"),
        ("# c\nsensor-1:xyz\n", "line 2: the key after the last ':' is not hexadecimal"),
        ("sensor-1:00112233\n", "line 1: a PSK must be 16-64 bytes (32-128 hex digits), not 4"),
        (
            f"a:{KEY.hex()}\nb:{KEY.hex()}\na:{KEY.hex()}\n",
            "line 3: identity 'a' again (first on line 1)",
        ),
        (f"two words:{KEY.hex()}\n", "line 1: PSK identity 'two words' has spaces"),
        (f":{KEY.hex()}\n", "line 1: expected IDENTITY:HEXKEY"),
        ("# nothing\n\n", "lists no IDENTITY:HEXKEY lines"),
    ],
)
def test_bad_psk_file_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = psk_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_psk_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_psk_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = psk_file(tmp_path, f"a:{KEY.hex()}\n", mode)
    with pytest.raises(ConfigError, match=f"mode {mode:o}.*chmod 600"):
        load_psk_file(path)


def test_missing_psk_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"psk_file not found: .*nope"):
        load_psk_file(tmp_path / "nope")


def test_table_never_shows_keys_and_has_a_decoy() -> None:
    table = PSKTable({"a": KEY, "b": OTHER_KEY})
    assert table.key_for(b"a") == KEY and table.key_for(b"c") is None
    assert dict(table) == {"a": KEY, "b": OTHER_KEY}
    assert KEY.hex() not in repr(table) and repr(table) == "PSKTable(2 identities)"
    assert table.decoy not in (KEY, OTHER_KEY) and len(table.decoy) == 32
    assert PSKTable({"a": KEY}).decoy != table.decoy


# -- settings ----------------------------------------------------------------------------


def test_settings_keep_keys_out_of_repr_and_frozen() -> None:
    keys = {"a": KEY}
    server = ServerSettings(psk_keys=keys)
    keys["b"] = OTHER_KEY  # the caller's dict changing does not change the settings
    assert dict(server.psk_keys) == {"a": KEY}
    assert server.certificate is None and server.psk_enabled
    client = ClientSettings(psk_identity="a", psk_key=KEY)
    assert KEY.hex() not in repr(server) + repr(client)
    assert str(KEY) not in repr(server) + repr(client)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ServerSettings(), "certificate is required"),
        (lambda: ServerSettings(psk_keys={"a": b"short"}), r"psk_keys\['a'\]: a PSK must be"),
        (lambda: ServerSettings(psk_keys={"a b": KEY}), "has spaces"),
        (lambda: ServerSettings(psk_keys=[("a", KEY)]), "psk_keys must map"),
        (lambda: ServerSettings(psk_keys={"a": KEY}, psk_ciphers=""), "psk_ciphers"),
        (lambda: ClientSettings(psk_identity="a"), "psk_identity and psk_key go together"),
        (lambda: ClientSettings(psk_key=KEY), "psk_identity and psk_key go together"),
        (lambda: ClientSettings(psk_identity="a", psk_key="00" * 16), "a PSK must be bytes"),
    ],
)
def test_bad_psk_settings(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        make()


def test_psk_file_and_keys_may_not_both_name_an_identity(tmp_path: Path) -> None:
    path = psk_file(tmp_path, f"a:{KEY.hex()}\n")
    with pytest.raises(ConfigError, match="identity 'a' is in psk_keys too"):
        build_server_context(ServerSettings(psk_file=path, psk_keys={"a": KEY}))


# -- TLS handshakes ------------------------------------------------------------------------


def psk_pair(
    version: str, *, client_key: bytes = KEY, identity: str = "sensor-1", **server: object
) -> tuple[TLSEngine, TLSEngine]:
    server.setdefault("psk_keys", {"sensor-1": KEY})
    server_settings = ServerSettings(min_version=version, max_version=version, **server)  # type: ignore[arg-type]
    client_settings = ClientSettings(
        psk_identity=identity, psk_key=client_key, min_version=version, max_version=version
    )
    client = TLSEngine.client(build_client_context(client_settings), "localhost")
    return client, TLSEngine.server(build_server_context(server_settings))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk_handshake_names_the_identity_on_both_sides(version: str) -> None:
    client, server = psk_pair(version)
    handshake(client, server)
    for engine in (client, server):
        info = engine.peer_info(("127.0.0.1", 1))
        assert info.psk_identity == "sensor-1"
        assert info.certificate is None
        assert info.protocol == f"TLSv{version}"
        # OpenSSL counts a TLS 1.3 external PSK as "reused"; it is not a resumption.
        assert not info.resumed
        assert "psk_identity=sensor-1" in info.describe()
    if version == "1.2":
        assert "PSK" in client.peer_info(None).cipher
    client.send(b"ping")
    transfer(client, server)
    assert server.receive(10) == b"ping"


def failure_of(client: TLSEngine, server: TLSEngine) -> tuple[str, str]:
    """(server's reason, client's reason) for a handshake that must fail."""
    with pytest.raises(HandshakeError) as on_server:
        handshake(client, server)
    client.receive_bytes(server.bytes_to_send())
    with pytest.raises(HandshakeError) as on_client:
        client.do_handshake()
    return on_server.value.reason, on_client.value.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_wrong_key_fails_with_a_clear_reason(version: str) -> None:
    server_reason, client_reason = failure_of(*psk_pair(version, client_key=OTHER_KEY))
    assert server_reason.startswith("wrong PSK for identity 'sensor-1' (")
    assert client_reason.startswith(
        "server refused PSK identity 'sensor-1': unknown or wrong key ("
    )


def test_unknown_identity_looks_like_a_wrong_key_to_the_peer() -> None:
    wrong_key = failure_of(*psk_pair("1.2", client_key=OTHER_KEY))
    unknown = failure_of(*psk_pair("1.2", identity="sensor-9"))
    assert unknown[0] == "unknown PSK identity 'sensor-9'"
    # Same alert either way (RFC 4279 section 2): the identity list stays private.
    assert unknown[1].replace("sensor-9", "sensor-1") == wrong_key[1]


def test_tls13_unknown_identity_on_a_server_without_certificate() -> None:
    server_reason, _ = failure_of(*psk_pair("1.3", identity="sensor-9"))
    assert server_reason.startswith("unknown PSK identity 'sensor-9' (")


def test_server_with_certificate_and_psk_serves_both(pki: PKIFiles) -> None:
    cert = pki.server_settings().certificate
    server_ctx = build_server_context(ServerSettings(certificate=cert, psk_keys={"s": KEY}))
    plain = TLSEngine.client(build_client_context(pki.client_settings()), "localhost")
    server = TLSEngine.server(server_ctx)
    handshake(plain, server)
    assert plain.peer_info(None).psk_identity is None
    assert server.peer_info(None).psk_identity is None
    assert plain.peer_info(None).subject is not None

    for version in ("1.2", "1.3"):
        settings = pki.client_settings(
            psk_identity="s", psk_key=KEY, min_version=version, max_version=version
        )
        with_psk = TLSEngine.client(build_client_context(settings), "localhost")
        server = TLSEngine.server(server_ctx)
        handshake(with_psk, server)
        assert server.peer_info(None).psk_identity == "s", version
        assert with_psk.peer_info(None).certificate is None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk_client_against_a_server_without_psk_verifies_its_certificate(
    pki: PKIFiles, version: str
) -> None:
    settings = pki.client_settings(
        psk_identity="s", psk_key=KEY, min_version=version, max_version=version
    )
    client = TLSEngine.client(build_client_context(settings), "localhost")
    server = TLSEngine.server(build_server_context(pki.server_settings()))
    handshake(client, server)
    info = client.peer_info(None)
    assert info.psk_identity is None and info.subject is not None
    assert "PSK" not in info.cipher


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk_server_offers_no_resumption(pki: PKIFiles, version: str) -> None:
    """A resumed session would not say which PSK identity made it."""
    cert = pki.server_settings().certificate
    server_ctx = build_server_context(ServerSettings(certificate=cert, psk_keys={"s": KEY}))
    client_ctx = build_client_context(pki.client_settings(max_version=version))
    first, server = TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(server_ctx)
    handshake(first, server)
    server.send(b"x")  # TLS 1.3 tickets come after the handshake
    transfer(server, first)
    assert first.receive(10) == b"x"
    again = TLSEngine.client(client_ctx, "localhost", session=first.session)
    handshake(again, TLSEngine.server(server_ctx))
    assert not again.peer_info(None).resumed


def test_psk_file_is_read_at_each_build(tmp_path: Path) -> None:
    """A reload rebuilds the contexts: a changed key takes effect then, not before."""
    path = psk_file(tmp_path, f"sensor-1:{KEY.hex()}\n")
    settings = ServerSettings(psk_file=path, max_version="1.2")
    before = build_server_context(settings)
    path.write_text(f"sensor-1:{OTHER_KEY.hex()}\n")
    after = build_server_context(settings)
    for ctx, key, works in ((before, KEY, True), (after, OTHER_KEY, True), (after, KEY, False)):
        client_settings = ClientSettings(psk_identity="sensor-1", psk_key=key, max_version="1.2")
        client = TLSEngine.client(build_client_context(client_settings), "localhost")
        if works:
            handshake(client, TLSEngine.server(ctx))
        else:
            with pytest.raises(HandshakeError, match="wrong PSK"):
                handshake(client, TLSEngine.server(ctx))


# -- DTLS ---------------------------------------------------------------------------------------


def dtls_psk_pair(client_key: bytes) -> tuple[DTLSEngine, DTLSEngine]:
    server_ctx = build_server_context(ServerSettings(psk_keys={"coap-1": KEY}), dtls=True)
    client_settings = ClientSettings(psk_identity="coap-1", psk_key=client_key)
    client = DTLSEngine.connect(build_client_context(client_settings, dtls=True), mtu=1200)
    cookies = CookieSecrets.random()
    assert not client.do_handshake()
    [first] = client.datagrams_to_send()
    hello = parse_client_hello(first)
    cookie = cookies.generate(CLIENT_ADDRESS, hello, NOW)
    client.receive_datagram(build_hello_verify_request(hello, cookie))
    assert not client.do_handshake()
    [second] = client.datagrams_to_send()
    server = DTLSEngine.accept(server_ctx, second, mtu=1200)
    return client, server


def dtls_handshake(client: DTLSEngine, server: DTLSEngine) -> None:
    server.do_handshake()
    for _ in range(10):
        if client.handshake_done and server.handshake_done:
            return
        for src, dst in ((server, client), (client, server)):
            for datagram in src.datagrams_to_send():
                dst.receive_datagram(datagram)
                if not dst.handshake_done:
                    dst.do_handshake()
    raise AssertionError("DTLS handshake did not converge")


def test_dtls_psk_handshake() -> None:
    client, server = dtls_psk_pair(KEY)
    dtls_handshake(client, server)
    info = server.peer_info(CLIENT_ADDRESS, transport="dtls")
    assert info.psk_identity == "coap-1" and info.protocol == "DTLSv1.2"
    assert client.peer_info(None, transport="dtls").psk_identity == "coap-1"
    client.send_message(b"coap")
    for datagram in client.datagrams_to_send():
        server.receive_datagram(datagram)
    assert server.receive_messages() == [b"coap"]


def test_dtls_wrong_key_stalls_the_handshake() -> None:
    """DTLS drops a record that fails authentication (RFC 6347 section 4.1.2.7),
    the client's Finished included: a wrong key ends at the handshake deadline."""
    client, server = dtls_psk_pair(OTHER_KEY)
    with pytest.raises(AssertionError, match="did not converge"):
        dtls_handshake(client, server)
    assert not server.handshake_done and not client.handshake_done


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_without_psk_on_a_psk_only_server(pki: PKIFiles, version: str) -> None:
    settings = ServerSettings(psk_keys={"s": KEY}, min_version=version, max_version=version)
    client = TLSEngine.client(build_client_context(pki.client_settings()), "localhost")
    with pytest.raises(HandshakeError) as info:
        handshake(client, TLSEngine.server(build_server_context(settings)))
    assert info.value.reason.startswith(
        "no pre-shared key offered, and no certificate to use instead ("
    )


def test_tls13_psk_client_with_a_cached_session_is_not_resumed_by_a_psk_server(
    pki: PKIFiles,
) -> None:
    """The PSK server sends tickets it will not honour; the client's next
    handshake offers one, and the server takes the external PSK instead."""
    cert = pki.server_settings().certificate
    server_ctx = build_server_context(ServerSettings(certificate=cert, psk_keys={"s": KEY}))
    client_ctx = build_client_context(pki.client_settings(psk_identity="s", psk_key=KEY))
    first, server = TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(server_ctx)
    handshake(first, server)
    server.send(b"x")
    transfer(server, first)
    assert first.receive(10) == b"x"
    assert first.session is not None
    again = TLSEngine.client(client_ctx, "localhost", session=first.session)
    server = TLSEngine.server(server_ctx)
    handshake(again, server)
    for engine in (again, server):
        info = engine.peer_info(None)
        assert (info.psk_identity, info.resumed) == ("s", False)


def test_tls13_psk_client_resumes_against_a_server_that_resumes(pki: PKIFiles) -> None:
    """A certificate server that issues tickets: the PSK client's second
    handshake is a real resumption, and is reported as one."""
    server_ctx = build_server_context(pki.server_settings())
    client_ctx = build_client_context(pki.client_settings(psk_identity="s", psk_key=KEY))
    first, server = TLSEngine.client(client_ctx, "localhost"), TLSEngine.server(server_ctx)
    handshake(first, server)
    server.send(b"x")
    transfer(server, first)
    assert first.receive(10) == b"x"
    again = TLSEngine.client(client_ctx, "localhost", session=first.session)
    handshake(again, TLSEngine.server(server_ctx))
    info = again.peer_info(None)
    assert info.resumed and info.psk_identity is None
