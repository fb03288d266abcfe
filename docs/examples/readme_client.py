import trio

from trio_tls_dtls import ClientSettings, open_tls_stream


async def main() -> None:
    settings = ClientSettings(ca_file="certs/ca.pem")
    stream = await open_tls_stream("localhost", 4433, settings=settings)
    await stream.send_all(b"hello")
    print(await stream.receive_some())  # b'HELLO' from the server above
    await stream.aclose()


trio.run(main)
