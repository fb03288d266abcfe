"""Serve TLS and DTLS with your own handlers inside a Trio program, and talk to them.

Run it in a folder holding a development PKI (``trio-tlsd certs`` writes one
to ./certs)::

    python embed.py
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    DTLSChannel,
    PeerInfo,
    ServerSettings,
    TLSStream,
    open_dtls_channel,
    open_tls_stream,
    serve_dtls,
    serve_tls,
)


async def greet(stream: TLSStream, peer: PeerInfo) -> None:
    """TLS handler: one task per connection, after its handshake."""
    await stream.send_all(f"hello {peer.subject or 'stranger'}\n".encode())
    async for data in stream:  # ends when the client closes
        await stream.send_all(data.upper())


async def count(channel: DTLSChannel, peer: PeerInfo) -> None:
    """DTLS handler: one task per peer; one receive is one datagram."""
    n = 0
    async for datagram in channel:
        n += 1
        await channel.send(b"%d: %s" % (n, datagram))


async def main() -> None:
    server_settings = ServerSettings.from_files(
        "certs/server.pem",
        "certs/server.key",
        ca_file="certs/ca.pem",  # the CA that signs client certificates
        verify_client="optional",  # ask; anonymous clients are still let in
    )
    client_settings = ClientSettings(
        ca_file="certs/ca.pem",
        certificate=CertificateSettings("certs/client.pem", "certs/client.key"),
    )
    async with trio.open_nursery() as nursery:
        # nursery.start returns once the server is listening; port 0 = any free port.
        tls_server = await nursery.start(
            partial(serve_tls, greet, 0, host="127.0.0.1", settings=server_settings)
        )
        dtls_server = await nursery.start(
            partial(serve_dtls, count, 0, host="127.0.0.1", settings=server_settings)
        )
        tls_port = tls_server.addresses[0][1]
        dtls_port = dtls_server.addresses[0][1]

        # The certificate names "localhost": connect by that name so it verifies.
        stream = await open_tls_stream("localhost", tls_port, settings=client_settings)
        print("TLS:", stream.info.protocol, stream.info.cipher)
        print(await stream.receive_some())
        await stream.send_all(b"shout this")
        print(await stream.receive_some())
        await stream.aclose()

        channel = await open_dtls_channel("localhost", dtls_port, settings=client_settings)
        print("DTLS:", channel.info.protocol, channel.info.cipher)
        for word in (b"one", b"two"):
            await channel.send(word)
            print(await channel.receive())
        await channel.aclose()

        # Stop both servers: cancel the nursery they run in.
        nursery.cancel_scope.cancel()
    print("TLS stats:", tls_server.stats.handshakes_ok, "handshake(s) ok")
    print("DTLS stats:", dtls_server.stats.handshakes_ok, "handshake(s) ok")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main)
