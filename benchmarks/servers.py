"""Echo servers for the benchmark suite, one per process: ``python servers.py KIND DIR``.

KIND is one of:

* ``ours-tls``, ``ours-dtls``: trio-tls-dtls's :class:`~trio_tls_dtls.Service`
  (TLS only or DTLS only), with its echo handlers and default settings;
  ``-inline`` and ``-threads`` after either force the handshakes onto the
  event loop or into worker threads;
* ``trio-tls``: ``trio.SSLStream`` (stdlib ``ssl``, the system's OpenSSL)
  over ``trio.serve_tcp``;
* ``trio-dtls``: ``trio.DTLSEndpoint`` (pyOpenSSL) serving DTLS 1.2;
* ``asyncio``, ``uvloop``: an ``asyncio.Protocol`` echo (the fastest way
  asyncio offers: no streams, ``data_received`` writes straight back) over
  stdlib ``ssl``, on asyncio's own event loop or on uvloop's;
* ``tcp``, ``udp``: plain trio echo, the ceilings.

The Go crypto/tls peer is ``benchmarks/go`` (its own binary, same contract)
and OpenSSL's own cost, with no sockets at all, is ``benchmarks/floor.py``.

DIR holds the development PKI (server.pem, server.key, ca.pem). ``--mtls``
requires client certificates. The server listens on 127.0.0.1, an ephemeral
port, prints ``READY <port>`` on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import Literal, cast

import trio
from OpenSSL import SSL

from trio_tls_dtls import CertificateSettings, OffloadSettings, ServerSettings, VerifyClient
from trio_tls_dtls.service.service import Service

HOST = "127.0.0.1"
DTLS1_2_VERSION = 0xFEFD
KINDS = (
    "ours-tls",
    "ours-dtls",
    "ours-tls-inline",
    "ours-dtls-inline",
    "ours-tls-threads",
    "ours-dtls-threads",
    "trio-tls",
    "trio-dtls",
    "asyncio",
    "uvloop",
    "tcp",
    "udp",
)


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


async def stream_echo(stream: trio.abc.Stream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve_ours(
    folder: Path, mtls: bool, *, tls: bool, offload: bool | Literal["auto"] = "auto"
) -> None:
    settings = ServerSettings(
        offload=OffloadSettings(handshakes=offload),
        certificate=CertificateSettings(folder / "server.pem", folder / "server.key"),
        ca_file=folder / "ca.pem" if mtls else None,
        verify_client=VerifyClient.REQUIRED if mtls else VerifyClient.NONE,
        max_connections=4096,
        max_peers=4096,
    )
    service = Service(settings, tls=tls, dtls=not tls)
    await service.bind(0, HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        ready(service.port)


def stdlib_server_context(folder: Path, mtls: bool) -> ssl.SSLContext:
    """The stdlib ``ssl`` context of trio-tls, asyncio and uvloop (defaults otherwise)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "server.pem", folder / "server.key")
    if mtls:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(folder / "ca.pem")
    return ctx


async def serve_trio_tls(folder: Path, mtls: bool) -> None:
    ctx = stdlib_server_context(folder, mtls)

    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError):
            await trio.aclose_forcefully(tcp)
            return
        await stream_echo(stream)

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        ready(listeners[0].socket.getsockname()[1])


async def serve_trio_dtls(folder: Path, mtls: bool) -> None:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    # DTLS 1.2, as ours (pyOpenSSL has no name for DTLS1_2_VERSION).
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.use_certificate_chain_file(str(folder / "server.pem"))
    ctx.use_privatekey_file(str(folder / "server.key"))
    if mtls:
        ctx.load_verify_locations(str(folder / "ca.pem"))
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)

    async def handler(channel: trio.DTLSChannel) -> None:
        try:
            with trio.fail_after(10):
                await channel.do_handshake()
            async for packet in channel:
                await channel.send(packet)
        except (trio.BrokenResourceError, trio.TooSlowError, trio.ClosedResourceError):
            pass
        except SSL.ZeroReturnError:
            # trio 0.35's DTLSChannel.receive leaks this on the peer's
            # close_notify instead of ending the iteration.
            pass

    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    with trio.DTLSEndpoint(sock) as endpoint:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve, ctx, handler)
            ready(port)
            await trio.sleep_forever()


async def serve_tcp(folder: Path, mtls: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, stream_echo, listeners)
        ready(listeners[0].socket.getsockname()[1])


async def serve_udp(folder: Path, mtls: bool) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    ready(sock.getsockname()[1])
    while True:
        data, address = await sock.recvfrom(65536)
        await sock.sendto(data, address)


class _AsyncioEcho(asyncio.Protocol):
    """Echo each chunk as it arrives: asyncio's cheapest path, as its benchmarks use."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _asyncio_main(folder: Path, mtls: bool) -> None:
    loop = asyncio.get_running_loop()
    # A client that leaves mid-handshake is the load's business, not a log line.
    loop.set_exception_handler(lambda loop, context: None)
    server = await loop.create_server(
        _AsyncioEcho,
        HOST,
        0,
        ssl=stdlib_server_context(folder, mtls),
        ssl_handshake_timeout=10,
        backlog=1024,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def run_asyncio(folder: Path, mtls: bool, *, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop  # the optional bench extra; the suite skips this peer without it

        uvloop.run(_asyncio_main(folder, mtls))
    else:
        asyncio.run(_asyncio_main(folder, mtls))


SERVERS = {
    "ours-tls": partial(serve_ours, tls=True),
    "ours-dtls": partial(serve_ours, tls=False),
    # The default is OffloadSettings(handshakes="auto"); these force handshakes
    # onto the event loop, or into worker threads (benchmarks/offload_modes.py).
    "ours-tls-inline": partial(serve_ours, tls=True, offload=False),
    "ours-dtls-inline": partial(serve_ours, tls=False, offload=False),
    "ours-tls-threads": partial(serve_ours, tls=True, offload=True),
    "ours-dtls-threads": partial(serve_ours, tls=False, offload=True),
    "trio-tls": serve_trio_tls,
    "trio-dtls": serve_trio_dtls,
    "tcp": serve_tcp,
    "udp": serve_udp,
}


async def main(kind: str, folder: Path, mtls: bool) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(SERVERS[kind], folder, mtls)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("pki", type=Path)
    parser.add_argument("--mtls", action="store_true")
    args = parser.parse_args()
    if args.kind in ("asyncio", "uvloop"):
        run_asyncio(args.pki, args.mtls, use_uvloop=args.kind == "uvloop")
    else:
        trio.run(main, args.kind, args.pki, args.mtls)
    sys.exit(0)
