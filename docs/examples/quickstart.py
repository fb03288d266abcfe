"""The quick start's Python: a TLS server and a client in one Trio program.

Run it in a folder holding a development PKI (``trio-tlsd certs``)::

    python quickstart.py
"""

from __future__ import annotations

from functools import partial

import trio

from trio_tls_dtls import (
    ClientSettings,
    PeerInfo,
    ServerSettings,
    TLSServer,
    TLSStream,
    open_tls_stream,
    serve_tls,
)


async def shout(stream: TLSStream, peer: PeerInfo) -> None:
    async for data in stream:
        await stream.send_all(data.upper())


async def main() -> None:
    settings = ServerSettings.from_files("certs/server.pem", "certs/server.key")
    async with trio.open_nursery() as nursery:
        server: TLSServer = await nursery.start(
            partial(serve_tls, shout, 0, host="127.0.0.1", settings=settings)
        )
        port = server.addresses[0][1]
        client = ClientSettings(ca_file="certs/ca.pem")
        stream = await open_tls_stream("localhost", port, settings=client)
        await stream.send_all(b"hello")
        print(await stream.receive_some())  # b'HELLO'
        await stream.aclose()
        nursery.cancel_scope.cancel()


trio.run(main)
