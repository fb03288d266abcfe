"""The TLS server after a ticket key rotation: it reads the ClientHello before choosing a front.

A resumption that succeeds after one rotation proves the previous front was
chosen (the current one cannot open that ticket). What cuts the reading
short (silence, a half ClientHello, EOF) is met by the handshake that
follows, under the same deadline, and counted as a handshake failure.
"""

from __future__ import annotations

import pytest
import trio

from tests.conftest import PKIFiles
from tests.helpers import port_of, running_tls_server
from trio_tls_dtls import open_tls_stream
from trio_tls_dtls.core.contexts import client_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.drivers.tls.stream import TLSStream

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_a_hello_in_pieces_after_a_rotation_resumes(pki: PKIFiles, version: str) -> None:
    async with running_tls_server(pki.server_settings(max_version=version)) as server:
        client = pki.client_settings()
        first = await open_tls_stream("127.0.0.1", port_of(server), settings=client, resume=False)
        await first.send_all(b"x")  # TLS 1.3: the ticket arrives with the echo
        assert await first.receive_some() == b"x"
        session = first.session
        await first.aclose()
        assert server.contexts.rotate()

        engine = TLSEngine.client(client_context(client), "localhost", session=session)
        assert not engine.do_handshake()
        hello = engine.bytes_to_send()
        transport = await trio.open_tcp_stream("127.0.0.1", port_of(server))
        for piece in (hello[:3], hello[3:100], hello[100:]):
            await transport.send_all(piece)
            await trio.sleep(0.02)  # each piece its own segment: the server waits for all
        stream = TLSStream(transport, engine)
        with trio.fail_after(5):
            await stream.do_handshake()
        assert stream.info.resumed
        await stream.aclose()


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
async def test_a_silent_or_half_hello_after_a_rotation_times_out_once(
    pki: PKIFiles, sent: bytes
) -> None:
    settings = pki.server_settings(handshake_timeout=0.3)
    async with running_tls_server(settings) as server:
        server.contexts.rotate()
        transport = await trio.open_tcp_stream("127.0.0.1", port_of(server))
        await transport.send_all(sent)
        with trio.fail_after(5):
            assert await transport.receive_some() == b""  # closed by the server
            while server.stats.active:
                await trio.sleep(0.01)
        assert dict(server.stats.handshakes_failed) == {"timeout": 1}
        assert server.stats.closed_by_reason["handshake_timeout"] == 1
        await transport.aclose()
        # ... and the server goes on serving.
        stream = await open_tls_stream("127.0.0.1", port_of(server), settings=pki.client_settings())
        await stream.aclose()


async def test_eof_in_the_middle_of_a_hello_after_a_rotation_is_a_failed_handshake(
    pki: PKIFiles,
) -> None:
    async with running_tls_server(pki.server_settings()) as server:
        server.contexts.rotate()
        transport = await trio.open_tcp_stream("127.0.0.1", port_of(server))
        await transport.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        await transport.send_eof()
        with trio.fail_after(5):
            while server.stats.active:
                await trio.sleep(0.01)
        assert sum(server.stats.handshakes_failed.values()) == 1
        assert "timeout" not in server.stats.handshakes_failed
        await transport.aclose()
