"""TLS and DTLS on one port number with your own handlers, then a graceful drain.

Run it in a folder holding a development PKI (``trio-tlsd certs``)::

    python embed_service.py
"""

from __future__ import annotations

from functools import partial

import trio

from trio_tls_dtls import (
    ClientSettings,
    DTLSChannel,
    PeerInfo,
    ServerSettings,
    TLSStream,
    open_dtls_channel,
    open_tls_stream,
    serve,
)


async def tls_reverse(stream: TLSStream, peer: PeerInfo) -> None:
    async for data in stream:
        await stream.send_all(data[::-1])


async def dtls_reverse(channel: DTLSChannel, peer: PeerInfo) -> None:
    async for datagram in channel:
        await channel.send(datagram[::-1])


async def main() -> None:
    settings = ServerSettings.from_files("certs/server.pem", "certs/server.key")
    client = ClientSettings(ca_file="certs/ca.pem")
    async with trio.open_nursery() as nursery:
        service = await nursery.start(
            partial(
                serve,
                settings,
                0,
                host="127.0.0.1",
                tls_handler=tls_reverse,
                dtls_handler=dtls_reverse,
            )
        )
        print("serving on port", service.port)

        stream = await open_tls_stream("localhost", service.port, settings=client)
        await stream.send_all(b"stressed")
        print(await stream.receive_some())  # b'desserts'

        channel = await open_dtls_channel("localhost", service.port, settings=client)
        await channel.send(b"drawer")
        print(await channel.receive())  # b'reward'

        # Graceful shutdown: close_notify to everyone, wait (bounded) for the
        # handlers, then cancel whatever is left.
        with trio.move_on_after(settings.drain_timeout):
            async with trio.open_nursery() as drain:
                drain.start_soon(service.drain)
                # A well-behaved client sees the end of the stream and closes too.
                print("client sees end of stream:", await stream.receive_some() == b"")
                await stream.aclose()
                await channel.aclose()
        print("still open after drain:", service.open_count())
        print(service.summary())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
