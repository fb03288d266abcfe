import trio

from trio_tls_dtls import PeerInfo, ServerSettings, TLSStream, serve_tls


async def handler(stream: TLSStream, peer: PeerInfo) -> None:
    # peer.subject is the client certificate's subject with mutual TLS
    async for data in stream:
        await stream.send_all(data.upper())


settings = ServerSettings.from_files("certs/server.pem", "certs/server.key")
trio.run(lambda: serve_tls(handler, 4433, settings=settings))
