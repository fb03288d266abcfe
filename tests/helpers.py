"""Helpers for tests that run real servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from trio_tls_dtls.core.settings import ServerSettings
from trio_tls_dtls.drivers.dtls.server import DTLSHandler, DTLSServer, dtls_echo_handler, serve_dtls
from trio_tls_dtls.drivers.offload import CryptoOffload
from trio_tls_dtls.drivers.tls.server import TLSHandler, TLSServer, echo_handler, serve_tls


@asynccontextmanager
async def running_tls_server(
    settings: ServerSettings,
    handler: TLSHandler = echo_handler,
    *,
    host: str = "127.0.0.1",
    offload: CryptoOffload | None = None,
) -> AsyncIterator[TLSServer]:
    """A TLS server on an ephemeral loopback port, stopped on exit."""
    async with trio.open_nursery() as nursery:
        server: TLSServer = await nursery.start(
            partial(serve_tls, handler, 0, host=host, settings=settings, offload=offload)
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_dtls_server(
    settings: ServerSettings,
    handler: DTLSHandler = dtls_echo_handler,
    *,
    host: str = "127.0.0.1",
    offload: CryptoOffload | None = None,
) -> AsyncIterator[DTLSServer]:
    """A DTLS server on an ephemeral loopback port, stopped on exit."""
    async with trio.open_nursery() as nursery:
        server: DTLSServer = await nursery.start(
            partial(serve_dtls, handler, 0, host=host, settings=settings, offload=offload)
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def port_of(server: TLSServer | DTLSServer) -> int:
    return server.addresses[0][1]


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
