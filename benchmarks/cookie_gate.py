"""Cost of the cookie gate per datagram, and OpenSSL's DTLSv1_listen beside it.

    python benchmarks/cookie_gate.py

The gate (``core/cookie_gate.decide``, which the DTLS endpoint calls for
every datagram) is timed on its three common paths: a cookieless ClientHello
(parse, one HMAC, build the HelloVerifyRequest: a Reply), a returning
ClientHello with a valid cookie (parse, one HMAC to verify: an Admit) and a
known peer's ordinary record (a few byte comparisons: a Deliver). The first
two are also timed as their bare parts (``core/dtls_records`` and
``core/dtls_cookie`` called directly), which shows what the gate's own
checks add. The alternative to the whole gate, OpenSSL's own
``DTLSv1_listen``, needs an SSL object per datagram (the pyOpenSSL
``Connection`` with its two memory BIOs) and calls back into Python for the
cookie anyway.
"""

from __future__ import annotations

import contextlib
import hmac
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL

from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki
from trio_tls_dtls.core.contexts import build_server_context, client_context
from trio_tls_dtls.core.cookie_gate import Admit, Deliver, Reply, decide
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.core.settings import CertificateSettings, ClientSettings, ServerSettings

ADDRESS = ("127.0.0.1", 40000)


def per_call_us(fn: Callable[[], object], rounds: int = 20000, repeats: int = 5) -> float:
    """CPU microseconds per call: the machine may be shared, and wall time would
    count the time this process waited for a core."""
    for _ in range(rounds // 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(rounds):
            fn()
        samples.append((time.thread_time() - start) / rounds * 1e6)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = write_dev_pki(Path(tmp), make_dev_pki())
        server = ServerSettings(
            certificate=CertificateSettings(files["server.pem"], files["server.key"])
        )
        context = build_server_context(server, dtls=True)
        client = ClientSettings(ca_file=files["ca.pem"])
        engine = DTLSEngine.connect(client_context(client, dtls=True), "localhost", mtu=1200)
        engine.do_handshake()
        [hello_datagram] = engine.datagrams_to_send()

    secrets = CookieSecrets.random()
    now = time.time()
    first = parse_client_hello(hello_datagram)
    engine.receive_datagram(
        build_hello_verify_request(first, secrets.generate(ADDRESS, first, now))
    )
    engine.do_handshake()
    [returning_datagram] = engine.datagrams_to_send()
    record = b"\x17\xfe\xfd\x00\x01" + bytes(8) + b"\x00\x40" + bytes(64)

    def gate_first_hello() -> object:
        return decide(hello_datagram, ADDRESS, now, secrets, known_hello_id=None, admitting=True)

    def gate_returning_hello() -> object:
        return decide(
            returning_datagram, ADDRESS, now, secrets, known_hello_id=None, admitting=True
        )

    def gate_known_peer_record() -> object:
        return decide(record, ADDRESS, now, secrets, known_hello_id=b"id", admitting=True)

    def ours_first_hello() -> bytes:
        hello = parse_client_hello(hello_datagram)
        return build_hello_verify_request(hello, secrets.generate(ADDRESS, hello, now))

    hello = parse_client_hello(hello_datagram)
    cookie = secrets.generate(ADDRESS, hello, now)

    def ours_verify() -> bool:
        return secrets.verify(cookie, ADDRESS, parse_client_hello(hello_datagram), now)

    key = b"k" * 32
    openssl_ctx = SSL.Context(SSL.DTLS_METHOD)
    openssl_ctx.set_options(SSL.OP_NO_QUERY_MTU)
    openssl_ctx.set_cookie_generate_callback(
        lambda conn: hmac.digest(key, b"127.0.0.1|40000", "sha256")
    )
    openssl_ctx.set_cookie_verify_callback(lambda conn, cookie: True)
    del context  # only to show our real server context builds; the listener needs none

    def openssl_listen() -> bytes:
        conn = SSL.Connection(openssl_ctx, None)
        conn.set_accept_state()
        conn.bio_write(hello_datagram)
        with contextlib.suppress(SSL.WantReadError):
            conn.DTLSv1_listen()
        return conn.bio_read(4096)

    assert len(ours_first_hello()) < len(hello_datagram)
    assert ours_verify()
    assert isinstance(gate_first_hello(), Reply)
    assert isinstance(gate_returning_hello(), Admit)
    assert isinstance(gate_known_peer_record(), Deliver)
    assert openssl_listen()[0] == 22
    rows: list[tuple[str, Callable[[], object], int]] = [
        ("gate, cookieless ClientHello (Reply)", gate_first_hello, 20000),
        ("gate, valid returning cookie (Admit)", gate_returning_hello, 20000),
        ("gate, known peer's record (Deliver)", gate_known_peer_record, 20000),
        ("parts: parse + HMAC + build reply", ours_first_hello, 20000),
        ("parts: parse + verify returning cookie", ours_verify, 20000),
        ("DTLSv1_listen on a new SSL object", openssl_listen, 5000),
    ]
    print(f"ClientHello of {len(hello_datagram)} bytes; per datagram, median of 5 runs, CPU time:")
    for label, fn, rounds in rows:
        print(f"  {label + ':':40} {per_call_us(fn, rounds):7.2f} us")


if __name__ == "__main__":
    main()
