"""Cost of answering one cookieless ClientHello: our gate versus OpenSSL's DTLSv1_listen.

    python benchmarks/cookie_gate.py

Our gate (dtls/records.py + dtls/cookie.py) parses the ClientHello, computes
an HMAC and builds the HelloVerifyRequest from Python bytes. The alternative,
OpenSSL's own ``DTLSv1_listen``, needs an SSL object per datagram (the
pyOpenSSL ``Connection`` with its two memory BIOs) and calls back into Python
for the cookie anyway. Both are timed per ClientHello, and so is the check of
a returning ClientHello's cookie.
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
from trio_tls_dtls.core.dtls_cookie import CookieSecrets
from trio_tls_dtls.core.dtls_records import build_hello_verify_request, parse_client_hello
from trio_tls_dtls.core.engine import DTLSEngine
from trio_tls_dtls.core.settings import CertificateSettings, ClientSettings, ServerSettings

ADDRESS = ("127.0.0.1", 40000)


def per_call_us(fn: Callable[[], object], rounds: int = 20000, repeats: int = 5) -> float:
    for _ in range(rounds // 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        samples.append((time.perf_counter() - start) / rounds * 1e6)
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
    assert openssl_listen()[0] == 22
    print(f"ClientHello of {len(hello_datagram)} bytes; per ClientHello, median of 5 runs:")
    print(f"  our gate, HelloVerifyRequest:      {per_call_us(ours_first_hello):7.1f} us")
    print(f"  our gate, verify returning cookie: {per_call_us(ours_verify):7.1f} us")
    print(f"  DTLSv1_listen on a new SSL object: {per_call_us(openssl_listen, 5000):7.1f} us")


if __name__ == "__main__":
    main()
