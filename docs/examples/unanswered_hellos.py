"""Send DTLS ClientHellos to a server and never answer its HelloVerifyRequests.

Shows the cookie gate at work: every ClientHello gets a small
HelloVerifyRequest and nothing else. Usage::

    python unanswered_hellos.py PORT [COUNT]
"""

from __future__ import annotations

import contextlib
import socket
import sys

from OpenSSL import SSL


def client_hello() -> bytes:
    """The first flight of a fresh DTLS client, taken from a memory BIO."""
    conn = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    conn.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):  # it waits for the server's answer
        conn.do_handshake()
    return conn.bio_read(65536)


def main(port: int, count: int) -> None:
    hello = client_hello()
    sizes = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for _ in range(count):
            sock.sendto(hello, ("127.0.0.1", port))
            sizes.add(len(sock.recv(65536)))
    print(f"{count} ClientHellos of {len(hello)} bytes; answers of {sorted(sizes)} bytes")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 100)
