"""The client session cache: open_tls_stream/open_dtls_channel resume by themselves.

Against our own servers (TLS 1.2, TLS 1.3, DTLS 1.2) and ``openssl s_server``:
the second connection with one settings object resumes; ``resume=False``
neither offers nor keeps; another settings object (even an equal one) does
not share; a server restarted with new ticket keys costs a full handshake,
not an error; a server that fails a resumption attempt is retried once and
then never offered a session again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from tests import openssl
from tests.conftest import PKIFiles
from tests.helpers import receive_exactly
from tests.openssl import OPENSSL_MARKS, RecordingEcho, unique_line
from trio_tls_dtls import (
    ClientSettings,
    DTLSChannel,
    ServerSettings,
    TLSStream,
    open_dtls_channel,
    open_tls_stream,
)
from trio_tls_dtls.core.contexts import build_server_context
from trio_tls_dtls.core.engine import TLSEngine
from trio_tls_dtls.core.errors import HandshakeError
from trio_tls_dtls.core.peer_info import PeerInfo
from trio_tls_dtls.drivers.dtls.server import dtls_echo_handler, serve_dtls
from trio_tls_dtls.drivers.session_cache import SessionCache, session_cache
from trio_tls_dtls.drivers.tls.server import echo_handler, serve_tls

KINDS = ["tls-1.2", "tls-1.3", "dtls"]
STEP = 5.0

# -- the cache itself (no network) --------------------------------------------------


def test_least_recently_used_session_goes_first() -> None:
    cache = SessionCache(max_sessions=2)
    a, b, c = SSL.Session(), SSL.Session(), SSL.Session()
    cache.put(("a", 1, "a"), a)
    cache.put(("b", 1, "b"), b)
    assert cache.get(("a", 1, "a")) is a  # "a" is now the most recently used
    cache.put(("c", 1, "c"), c)
    assert len(cache) == 2
    assert cache.get(("b", 1, "b")) is None
    assert cache.get(("a", 1, "a")) is a
    assert cache.get(("c", 1, "c")) is c


def test_a_new_session_replaces_the_entry_and_discard_spares_a_newer_one() -> None:
    cache = SessionCache()
    key = ("h", 443, "h")
    old, new = SSL.Session(), SSL.Session()
    cache.put(key, old)
    cache.put(key, new)
    assert cache.get(key) is new
    cache.discard(key, old)  # a connection that offered `old` failed: `new` stays
    assert cache.get(key) is new
    cache.discard(key, new)
    assert cache.get(key) is None


def test_a_marked_key_is_never_offered_a_session() -> None:
    cache = SessionCache()
    key = ("h", 443, "h")
    cache.put(key, SSL.Session())
    cache.mark(key)
    assert cache.get(key) is None
    cache.put(key, SSL.Session())
    assert cache.get(key) is None
    assert cache.marked(key)


def test_one_cache_per_settings_object_and_family() -> None:
    settings, equal = ClientSettings(), ClientSettings()
    assert settings == equal  # equal values, but separate objects
    assert session_cache(settings) is session_cache(settings)
    assert session_cache(settings) is not session_cache(equal)
    assert session_cache(settings) is not session_cache(settings, dtls=True)


# -- against our servers ------------------------------------------------------------

Conn = TLSStream | DTLSChannel


def server_settings(pki: PKIFiles, kind: str, **options: Any) -> ServerSettings:
    if kind.startswith("tls-"):
        version = kind.removeprefix("tls-")
        options.update(min_version=version, max_version=version)
    return pki.server_settings(**options)


@asynccontextmanager
async def serving(
    kind: str, settings: ServerSettings, handler: Any, port: int = 0
) -> AsyncIterator[int]:
    """Our TLS or DTLS echo server on 127.0.0.1:*port* (0: any); yields the port."""
    serve: Any = serve_dtls if kind == "dtls" else serve_tls
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve, handler, port, host="127.0.0.1", settings=settings)
        )
        try:
            yield server.addresses[0][1]
        finally:
            nursery.cancel_scope.cancel()


def echo_for(kind: str) -> RecordingEcho:
    return RecordingEcho(dtls_echo_handler if kind == "dtls" else echo_handler)


async def connect(kind: str, port: int, settings: ClientSettings, **options: Any) -> Conn:
    opener: Callable[..., Awaitable[Conn]] = (
        open_dtls_channel if kind == "dtls" else open_tls_stream
    )
    with trio.fail_after(STEP):
        return await opener(
            "127.0.0.1", port, settings=settings, server_hostname="localhost", **options
        )


async def echo(conn: Conn) -> None:
    """One message there and back (a TLS 1.3 client reads the server's tickets with it)."""
    line = unique_line()
    with trio.fail_after(STEP):
        if isinstance(conn, TLSStream):
            await conn.send_all(line)
            assert await receive_exactly(conn, len(line)) == line
        else:
            await conn.send(line)
            assert await conn.receive() == line


async def session_round(kind: str, port: int, settings: ClientSettings, **options: Any) -> bool:
    """Connect, echo, close: whether the handshake resumed."""
    conn = await connect(kind, port, settings, **options)
    await echo(conn)
    await conn.aclose()
    return conn.info.resumed


@pytest.mark.parametrize("kind", KINDS)
async def test_the_second_connection_resumes(pki: PKIFiles, kind: str) -> None:
    handler = echo_for(kind)
    client = pki.client_settings()
    async with serving(kind, server_settings(pki, kind), handler) as port:
        resumed = [await session_round(kind, port, client) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
    assert resumed == [False, True, True]
    assert [peer.resumed for peer in handler.peers] == [False, True, True]
    expected = "DTLSv1.2" if kind == "dtls" else f"TLSv{kind[-3:]}"
    assert {peer.protocol for peer in handler.peers} == {expected}


@pytest.mark.parametrize("kind", KINDS)
async def test_resume_false_neither_offers_nor_keeps(pki: PKIFiles, kind: str) -> None:
    client = pki.client_settings()
    async with serving(kind, server_settings(pki, kind), echo_for(kind)) as port:
        assert not await session_round(kind, port, client, resume=False)
        assert not await session_round(kind, port, client)  # nothing was kept
        assert not await session_round(kind, port, client, resume=False)  # not offered
        assert await session_round(kind, port, client)


@pytest.mark.parametrize("kind", KINDS)
async def test_sessions_are_not_shared_between_settings_objects(pki: PKIFiles, kind: str) -> None:
    first, equal = pki.client_settings(), pki.client_settings()
    async with serving(kind, server_settings(pki, kind), echo_for(kind)) as port:
        assert not await session_round(kind, port, first)
        assert not await session_round(kind, port, equal)
        assert await session_round(kind, port, first)


async def test_an_explicit_session_is_offered_instead(pki: PKIFiles) -> None:
    client = pki.client_settings()
    async with serving("tls-1.2", server_settings(pki, "tls-1.2"), echo_handler) as port:
        stream = await connect("tls-1.2", port, client, resume=False)
        await echo(stream)
        await stream.aclose()
        # The cache is empty (resume=False kept nothing); the explicit session resumes.
        assert await session_round("tls-1.2", port, client, session=stream.session)
        assert await session_round("tls-1.2", port, client)  # ... and that one was kept


@pytest.mark.parametrize("kind", KINDS)
async def test_a_restarted_server_costs_a_full_handshake_not_an_error(
    pki: PKIFiles, kind: str
) -> None:
    client = pki.client_settings()
    async with serving(kind, server_settings(pki, kind), echo_for(kind)) as port:
        assert not await session_round(kind, port, client)
        assert await session_round(kind, port, client)
    # Same port, a new server Context: new ticket keys, an empty session cache.
    handler = echo_for(kind)
    async with serving(kind, server_settings(pki, kind), handler, port) as again:
        assert again == port
        assert not await session_round(kind, port, client)
        assert await session_round(kind, port, client)
        await trio.testing.wait_all_tasks_blocked()
    assert [peer.resumed for peer in handler.peers] == [False, True]


async def test_a_tls13_ticket_read_before_a_cancelled_receive_is_kept_at_aclose(
    pki: PKIFiles,
) -> None:
    # As `trio-tlsd client` does: a reader task that never got data is
    # cancelled, then the stream is closed. Its reads took in the tickets.
    client = pki.client_settings()
    async with serving("tls-1.3", server_settings(pki, "tls-1.3"), echo_handler) as port:
        stream = await connect("tls-1.3", port, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await stream.aclose()
        assert await session_round("tls-1.3", port, client)


async def test_a_tls13_connection_that_read_nothing_leaves_the_entry(pki: PKIFiles) -> None:
    client = pki.client_settings()
    async with serving("tls-1.3", server_settings(pki, "tls-1.3"), echo_handler) as port:
        assert not await session_round("tls-1.3", port, client)
        for _ in range(3):  # handshake only: the cached ticket stays and resumes each time
            stream = await connect("tls-1.3", port, client)
            assert stream.info.resumed
            await stream.aclose()


# -- a server that fails the handshake instead of declining to resume ---------------


def context_without_session_id(pki: PKIFiles, version: int) -> SSL.Context:
    """Verifies client certificates but sets no session ID context, as many servers do.

    OpenSSL then fails any handshake that offers a session ("session id
    context uninitialized") rather than fall back to a full one.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.use_certificate_chain_file(str(pki.server_cert))
    ctx.use_privatekey_file(str(pki.server_key))
    ctx.load_verify_locations(str(pki.ca))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["1.2", "1.3"])
async def test_a_server_that_fails_resumption_is_retried_once_then_not_offered(
    pki: PKIFiles, version: int
) -> None:
    ctx = context_without_session_id(pki, version)
    outcomes: list[str] = []

    async def serve_one(transport: trio.SocketStream) -> None:
        stream = TLSStream(transport, TLSEngine.server(ctx))
        try:
            await stream.do_handshake()
            outcomes.append("ok")
            await echo_handler(stream, PeerInfo(None, "tls", "", "", False))
        except HandshakeError as exc:
            outcomes.append(exc.reason)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    client = pki.client_settings(with_cert=True)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        resumed = [await session_round("tls", port, client) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert resumed == [False, False, False]
    # The second connection offered the session, was refused, and tried
    # again without it; the third offered none.
    assert outcomes == ["ok", "session id context uninitialized", "ok", "ok"]
    assert session_cache(client).marked(("127.0.0.1", port, "localhost"))


async def test_a_lost_connection_drops_the_session_without_a_retry(pki: PKIFiles) -> None:
    ctx = build_server_context(server_settings(pki, "tls-1.2"))
    connections = 0

    async def serve_one(transport: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 2:  # the one that offers the session: cut it
            await trio.aclose_forcefully(transport)
            return
        stream = TLSStream(transport, TLSEngine.server(ctx))
        with contextlib.suppress(trio.BrokenResourceError):
            await echo_handler(stream, PeerInfo(None, "tls", "", "", False))
        await trio.aclose_forcefully(stream)

    client = pki.client_settings()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        assert not await session_round("tls", port, client)
        with pytest.raises(HandshakeError, match="peer closed the connection"):
            await connect("tls", port, client)
        assert connections == 2  # not tried again: a session does not lose connections
        assert len(session_cache(client)) == 0
        assert not await session_round("tls", port, client)  # a full handshake, no error
        assert await session_round("tls", port, client)
        nursery.cancel_scope.cancel()


# -- against openssl s_server ----------------------------------------------------------


def needs_openssl(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    for mark in OPENSSL_MARKS:
        test = mark(test)
    return test


@needs_openssl
@pytest.mark.parametrize(("flag", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
async def test_resumes_with_s_server_tls(pki: PKIFiles, flag: str, protocol: str) -> None:
    client = pki.client_settings()
    # Without -rev, s_server prints what it receives, sends its stdin, and
    # reports each resumed session ("Reused session-id").
    async with openssl.s_server(pki, flag, reverse=False, naccept=2) as (server, port):
        for count, expected in enumerate((False, True), start=1):
            stream = await open_tls_stream("127.0.0.1", port, settings=client)
            assert (stream.info.protocol, stream.info.resumed) == (protocol, expected)
            line, reply = unique_line(), unique_line()
            await stream.send_all(line)
            await server.wait_for(line)
            await server.send(reply)
            # TLS 1.3: the tickets arrive before the reply, and are read with it.
            assert await receive_exactly(stream, len(reply)) == reply
            await stream.aclose()
            await server.wait_until(lambda n=count: server.out.count("DONE") == n, "DONE")
        assert await server.wait_exit() == 0, server.transcript()
    assert server.out.count("Reused session-id") == 1, server.transcript()


@needs_openssl
async def test_resumes_with_s_server_dtls(pki: PKIFiles) -> None:
    client = pki.client_settings()
    async with openssl.s_server(pki, "-dtls1_2", reverse=False, naccept=2) as (server, port):
        for count, expected in enumerate((False, True), start=1):
            channel = await open_dtls_channel("127.0.0.1", port, settings=client)
            assert (channel.info.protocol, channel.info.resumed) == ("DTLSv1.2", expected)
            line = unique_line()
            await channel.send(line)
            await server.wait_for(line)  # s_server prints what it receives
            await channel.aclose()
            # ... and DONE when it reads our close_notify.
            await server.wait_until(lambda n=count: server.out.count("DONE") == n, "DONE")
        assert await server.wait_exit() == 0, server.transcript()
    assert server.out.count("Reused session-id") == 1, server.transcript()
