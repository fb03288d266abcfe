"""Where OpenSSL's memory per idle TLS connection goes: server ends held in memory.

    python benchmarks/openssl_memory.py [--count 400]

Uses the floor's ends (``benchmarks/floor.py``: no sockets, no Trio): makes
*count* server ends, each after a full handshake and one 5-byte echo (or one
64 KiB echo), drops their clients, and reports the bytes malloc holds per end
(glibc's ``mallinfo2``, in use, not RSS: freed memory does not count). The
variants tell the parts apart:

* the key exchange group: the hybrid post-quantum X25519MLKEM768 that
  OpenSSL 4.0 and our client prefer, against X25519 alone (a stdlib ``ssl``
  client, which offers no ML-KEM);
* the memory BIOs: as they are after the exchange, and after
  :meth:`~trio_tls_dtls.TLSEngine.release_buffers` (what our streams do after
  the handshake) replaced the empty ones;
* the stdlib's ``SSLObject`` on the system's OpenSSL 3.0, the library under
  trio's ``SSLStream``, asyncio and uvloop.

The figures are in docs/performance.rst (W7).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import floor  # noqa: E402

from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def per_end(kind: str, pki: Path, count: int, *, echo: int, release: bool) -> tuple[float, str]:
    """KiB malloc holds per idle server end, and the group it negotiated."""
    fl = floor.Floor(kind, pki, mtls=False)

    def one() -> Any:
        client, server, _ = fl.handshake()
        if echo <= 5:
            floor._echo_batch(client, server, b"hello", batch=1)
        else:
            payload = bytes(echo)
            client.engine.send(payload)
            server.feed(client.out())
            got = b""
            while len(got) < echo:
                got += server.recv() or b""
            server.engine.send(got)
            client.feed(server.out())
        if release:
            server.engine.release_buffers()
        return server

    warm = [one() for _ in range(30)]  # one-off allocations are not per connection
    del warm
    before = malloc_in_use()
    held = [one() for _ in range(count)]
    after = malloc_in_use()
    return (after - before) / count / 1024, held[0].negotiated().get("group") or "x25519"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400)
    opts = parser.parse_args()
    variants = [
        ("floor", 5, False, "OpenSSL 4.0, as the exchange left it"),
        ("floor", 5, True, "OpenSSL 4.0, empty BIOs replaced"),
        ("floor-x25519", 5, False, "OpenSSL 4.0, as the exchange left it"),
        ("floor-x25519", 5, True, "OpenSSL 4.0, empty BIOs replaced"),
        ("floor-stdlib", 5, False, "OpenSSL 3.0 (stdlib SSLObject)"),
        ("floor", 65536, False, "OpenSSL 4.0, after a 64 KiB echo"),
        ("floor", 65536, True, "OpenSSL 4.0, after a 64 KiB echo, BIOs replaced"),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        pki = Path(scratch)
        write_dev_pki(pki, make_dev_pki())
        for kind, echo, release, what in variants:
            kib, group = per_end(
                kind, pki, opts.count if echo <= 5 else opts.count // 2, echo=echo, release=release
            )
            print(f"{kib:7.1f} KiB  {group:<15} {what}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
