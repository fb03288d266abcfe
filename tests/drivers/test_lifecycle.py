"""The shared lifecycle (drivers/lifecycle.py), driven with a fake conversation.

Each test runs under Trio's autojump clock: deadlines (handshake, idle,
goodbye) pass as soon as every task waits, so nothing here depends on real
time. The real servers' close reasons over loopback are in
tests/service/test_close_reasons.py and tests/service/test_observability.py;
the last test here runs both servers with a sink of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from tests.conftest import PKIFiles
from tests.helpers import port_of
from trio_tls_dtls import open_dtls_channel, open_tls_stream
from trio_tls_dtls.core.close_record import CloseRecord
from trio_tls_dtls.core.errors import HandshakeError
from trio_tls_dtls.core.peer_info import Address, PeerInfo
from trio_tls_dtls.core.settings import CertificateSettings, ServerSettings
from trio_tls_dtls.drivers.dtls.server import DTLSServer, dtls_echo_handler, serve_dtls
from trio_tls_dtls.drivers.lifecycle import Lifecycle, Opened, Transport
from trio_tls_dtls.drivers.tls.server import TLSServer, TLSServerStats, echo_handler, serve_tls

LOCAL = "127.0.0.1"
ADDRESS: Address = ("192.0.2.7", 40000)
HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0
# Only the timeouts matter here: the fake conversations need no certificate.
SETTINGS = ServerSettings(
    certificate=CertificateSettings(cert_file=Path("unused.pem"), key_file=Path("unused.pem")),
    handshake_timeout=HANDSHAKE_TIMEOUT,
    idle_timeout=IDLE_TIMEOUT,
)


class FakeConversation:
    """A stream or channel whose handshake, close_notify and close are scripted."""

    def __init__(self, handshake: str = "ok") -> None:
        self.handshake = handshake  # "ok", "fail" or "hang"
        self.on_activity: Callable[[], None] | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.handshake_done = False
        self.peer_closed = False
        self.closed = False
        self.goodbyes = 0
        self.busy_goodbyes = 0  # this many close_notify attempts find the handler sending
        self.goodbye_broken = False
        self.peer_answers = trio.Event()  # set when our close_notify went out

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(
            address=ADDRESS, transport="tls", protocol="TLSv1.3", cipher="X", resumed=False
        )

    async def do_handshake(self) -> None:
        if self.handshake == "hang":
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        if self.handshake == "fail":
            raise HandshakeError("no shared cipher")
        self.handshake_done = True

    async def send_close_notify(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.goodbye_broken:
            raise trio.BrokenResourceError("transport gone")
        if self.busy_goodbyes:
            self.busy_goodbyes -= 1
            raise trio.BusyResourceError("the handler is sending")
        self.goodbyes += 1
        self.peer_answers.set()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()

    async def exchange(self, received: int, sent: int) -> None:
        """What a handler's receive and send do: count, and touch the idle deadline."""
        self.bytes_received += received
        self.bytes_sent += sent
        if self.on_activity is not None:
            self.on_activity()
        await trio.lowlevel.checkpoint()


Handler = Callable[[FakeConversation, PeerInfo], Awaitable[object]]


@dataclass
class Harness:
    """A lifecycle over fake conversations: the records it emitted, the ends it reported."""

    handler: Handler
    refuse: bool = False
    sink: Callable[[CloseRecord], object] | None = None
    """Where records go instead of :attr:`records`."""
    default_sink: bool = False
    """Give the lifecycle no sink: it counts into stats and logs the access line."""
    settings: ServerSettings = SETTINGS
    goodbye_grace: float | None = None
    """The transport's grace after a drain's close_notify (DTLS has one)."""
    stats: TLSServerStats = field(default_factory=TLSServerStats)
    records: list[CloseRecord] = field(default_factory=list)
    ended: list[tuple[Opened[FakeConversation] | None, FakeConversation]] = field(
        default_factory=list
    )
    scopes: dict[FakeConversation, trio.CancelScope] = field(default_factory=dict)
    """The open ones a drain says goodbye to (until they have *left*)."""
    open_count: int = 0
    """Like a TLS server's ``stats.active``: down once the record is out (*ended*)."""

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(
            Transport(
                "TLS",
                "connection",
                logging.getLogger("tests.lifecycle"),
                2.0,
                goodbye_grace=self.goodbye_grace,
            ),
            self.settings,
            self.handler,
            self.stats,
            None if self.default_sink else self.sink or self.records.append,
            open=self._open,
            left=self._left,
            ended=self._ended,
        )

    async def _open(self, conn: FakeConversation) -> Opened[FakeConversation] | None:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            return None
        scope = self.scopes[conn] = trio.CancelScope()
        self.open_count += 1
        return conn, scope, ADDRESS

    def _left(self, opened: Opened[FakeConversation], conn: FakeConversation) -> None:
        assert not conn.closed  # before the close
        del self.scopes[conn]

    def _ended(self, opened: Opened[FakeConversation] | None, conn: FakeConversation) -> None:
        assert opened is None or opened[0].closed  # after the close
        if opened is not None:
            assert self.records or self.sink or self.default_sink  # after the record
            self.open_count -= 1
        self.ended.append((opened, conn))

    async def drain(self) -> None:
        open_now = [(conn, scope.cancel) for conn, scope in self.scopes.items()]
        await self.lifecycle.drain(open_now, lambda: self.open_count)

    @property
    def record(self) -> CloseRecord:
        [record] = self.records
        return record


def autojump(test: Callable[[], Awaitable[None]]) -> None:
    """Run *test* on a clock that jumps to the next deadline whenever all tasks wait."""

    async def bounded() -> None:
        with trio.fail_after(3600):  # virtual time: a hang fails at once instead
            await test()

    trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))


async def echo_until_peer_closes(conn: FakeConversation, peer: PeerInfo) -> None:
    await conn.exchange(3, 3)
    await conn.peer_answers.wait()
    conn.peer_closed = True


async def wait_forever(conn: FakeConversation, peer: PeerInfo) -> None:
    await trio.sleep_forever()


async def run_one(harness: Harness, conn: FakeConversation) -> None:
    await harness.lifecycle.run(conn)


# -- the handshake ----------------------------------------------------------------------


def test_handshake_timeout() -> None:
    async def main() -> None:
        harness = Harness(wait_forever)
        conn = FakeConversation(handshake="hang")
        await run_one(harness, conn)
        record = harness.record
        assert record.reason == "handshake_timeout"
        assert record.info is None and record.handshake_error is None
        assert record.duration >= HANDSHAKE_TIMEOUT
        assert harness.stats.handshakes_failed == {"timeout": 1}
        assert conn.closed
        assert [conn for _, conn in harness.ended] == [conn]

    autojump(main)


def test_handshake_failed_carries_the_error() -> None:
    async def main() -> None:
        harness = Harness(wait_forever)
        await run_one(harness, FakeConversation(handshake="fail"))
        assert harness.record.reason == "handshake_failed"
        assert harness.record.handshake_error == "no shared cipher"
        assert harness.stats.handshakes_failed == {"no shared cipher": 1}
        assert harness.stats.handshakes_ok == 0

    autojump(main)


# -- the handler ------------------------------------------------------------------------


def test_handler_done_and_peer_closed() -> None:
    async def answer_and_return(conn: FakeConversation, peer: PeerInfo) -> None:
        await conn.exchange(4, 2)

    async def main() -> None:
        harness = Harness(answer_and_return)
        await run_one(harness, FakeConversation())
        conn = FakeConversation()
        conn.peer_closed = True  # the peer's close_notify came before the handler returned
        await run_one(harness, conn)
        done, closed = harness.records
        assert (done.reason, closed.reason) == ("handler_done", "peer_closed")
        assert (done.bytes_in, done.bytes_out) == (4, 2)
        assert done.info is not None and done.info.protocol == "TLSv1.3"
        assert (done.peer, done.transport) == (ADDRESS, "tls")
        assert harness.stats.handshakes_ok == 2
        assert harness.stats.handshake_seconds.count == 2

    autojump(main)


def test_idle_timeout_after_the_last_activity() -> None:
    async def busy_then_quiet(conn: FakeConversation, peer: PeerInfo) -> None:
        for _ in range(5):  # activity pushes the idle deadline on
            await trio.sleep(IDLE_TIMEOUT / 2)
            await conn.exchange(1, 1)
        await trio.sleep_forever()

    async def main() -> None:
        harness = Harness(busy_then_quiet)
        await run_one(harness, FakeConversation())
        record = harness.record
        assert record.reason == "idle_timeout"
        assert record.bytes_in == 5
        # Closed between 15/16 and 16/16 of the timeout after the last activity.
        active_for = 5 * IDLE_TIMEOUT / 2
        assert active_for + IDLE_TIMEOUT * 15 / 16 <= record.duration <= active_for + IDLE_TIMEOUT
        assert harness.stats.idle_timeouts == 1

    autojump(main)


def test_handler_error_and_broken_transport() -> None:
    async def raises(conn: FakeConversation, peer: PeerInfo) -> None:
        raise RuntimeError("handler blew up")

    async def transport_fails(conn: FakeConversation, peer: PeerInfo) -> None:
        raise trio.BrokenResourceError("connection reset")

    async def main() -> None:
        harness = Harness(raises)
        await run_one(harness, FakeConversation())
        assert harness.record.reason == "error"
        assert harness.stats.handler_errors == 1

        harness = Harness(transport_fails)
        await run_one(harness, FakeConversation())
        assert harness.record.reason == "broken"
        assert harness.stats.handler_errors == 0

    autojump(main)


def test_a_hard_stop_is_cancelled_and_still_recorded() -> None:
    async def main() -> None:
        harness = Harness(wait_forever)
        conn = FakeConversation()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, conn)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert harness.record.reason == "cancelled"
        assert harness.record.info is not None
        assert conn.closed
        assert len(harness.ended) == 1

    autojump(main)


# -- cut short: a drain, a removal ------------------------------------------------------


def test_drain_says_goodbye_and_waits() -> None:
    async def main() -> None:
        harness = Harness(echo_until_peer_closes)
        conn = FakeConversation()
        conn.busy_goodbyes = 3  # the handler is sending: the goodbye waits its turn
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, conn)
            await trio.sleep(1)
            await harness.drain()
            # The drain returned only once the connection had ended.
            assert harness.record.reason == "drained"
        assert conn.goodbyes == 1

    autojump(main)


def test_drain_cuts_a_handshake_and_a_connection_that_cannot_say_goodbye() -> None:
    async def main() -> None:
        harness = Harness(wait_forever)
        in_handshake = FakeConversation(handshake="hang")
        gone = FakeConversation()
        gone.goodbye_broken = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, in_handshake)
            nursery.start_soon(run_one, harness, gone)
            await trio.sleep(1)
            with trio.move_on_after(HANDSHAKE_TIMEOUT / 2):  # well before any deadline
                await harness.drain()
        assert [r.reason for r in harness.records] == ["drained", "drained"]
        assert sorted(r.info is None for r in harness.records) == [False, True]

    autojump(main)


def test_a_cut_outside_a_drain_is_removed_not_idle() -> None:
    async def main() -> None:
        harness = Harness(wait_forever)
        conn = FakeConversation()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, conn)
            await trio.sleep(IDLE_TIMEOUT / 2)
            harness.scopes[conn].cancel()  # a DTLS peer replaced or evicted
        assert harness.record.reason == "removed"
        assert harness.stats.idle_timeouts == 0

    autojump(main)


# -- admission and the sink -------------------------------------------------------------


def test_a_refused_connection_has_no_record_but_ends() -> None:
    async def main() -> None:
        harness = Harness(wait_forever, refuse=True)
        conn = FakeConversation()
        await run_one(harness, conn)
        assert harness.records == []
        assert harness.ended == [(None, conn)]
        assert not conn.closed  # the server's open hook closes what it refuses

    autojump(main)


def test_the_default_sink_counts_and_writes_the_access_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.access")

    async def answer_and_return(conn: FakeConversation, peer: PeerInfo) -> None:
        await conn.exchange(3, 2)

    async def main() -> None:
        harness = Harness(answer_and_return, default_sink=True)
        await run_one(harness, FakeConversation())
        assert harness.records == []
        assert harness.stats.closed_by_reason == {"handler_done": 1}
        assert (harness.stats.bytes_in, harness.stats.bytes_out) == (3, 2)

    autojump(main)
    [line] = [r.getMessage() for r in caplog.records if r.name == "trio_tls_dtls.access"]
    assert line == (
        "closed peer=192.0.2.7:40000 transport=tls protocol=TLSv1.3 cipher=X client_cert=- "
        "resumed=no bytes_in=3 bytes_out=2 duration_ms=0.0 reason=handler_done"
    )


def test_a_failing_sink_does_not_escape_the_task(caplog: pytest.LogCaptureFixture) -> None:
    def broken_sink(record: CloseRecord) -> None:
        raise ValueError("disk full")

    async def main() -> None:
        harness = Harness(wait_forever, sink=broken_sink)
        conn = FakeConversation(handshake="fail")
        await run_one(harness, conn)  # does not raise
        assert len(harness.ended) == 1

    autojump(main)
    assert any("close sink failed" in r.getMessage() for r in caplog.records)


# -- the real servers over loopback -----------------------------------------------------


async def test_servers_send_their_records_to_a_sink_of_your_own(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tls_dtls.access")
    records: list[CloseRecord] = []
    settings = pki.server_settings()
    client = pki.client_settings()
    async with trio.open_nursery() as nursery:
        tls: TLSServer = await nursery.start(
            partial(
                serve_tls, echo_handler, 0, host=LOCAL, settings=settings, on_close=records.append
            )
        )
        dtls: DTLSServer = await nursery.start(
            partial(
                serve_dtls,
                dtls_echo_handler,
                0,
                host=LOCAL,
                settings=settings,
                on_close=records.append,
            )
        )
        stream = await open_tls_stream(LOCAL, port_of(tls), settings=client)
        await stream.send_all(b"abc")
        assert await stream.receive_some() == b"abc"
        await stream.aclose()
        channel = await open_dtls_channel(LOCAL, port_of(dtls), settings=client)
        await channel.send(b"de")
        assert await channel.receive() == b"de"
        await channel.aclose()
        with trio.fail_after(5):
            while tls.stats.active or dtls.stats.peers_active:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    by_transport = {r.transport: r for r in records}
    assert sorted(by_transport) == ["dtls", "tls"] and len(records) == 2
    assert (by_transport["tls"].reason, by_transport["tls"].bytes_in) == ("peer_closed", 3)
    assert (by_transport["dtls"].reason, by_transport["dtls"].bytes_out) == ("peer_closed", 2)
    assert by_transport["dtls"].info is not None
    assert by_transport["dtls"].info.protocol == "DTLSv1.2"
    # The sink replaced the default: no access line, no counting.
    assert [r for r in caplog.records if r.name == "trio_tls_dtls.access"] == []
    assert not tls.stats.closed_by_reason and not dtls.stats.closed_by_reason


def test_servers_still_expose_their_current_context(pki: PKIFiles) -> None:
    """``server.context`` (public before ticket-key fronts) is the current front."""
    settings = pki.server_settings()
    for server in (TLSServer(echo_handler, settings), DTLSServer(dtls_echo_handler, settings)):
        assert isinstance(server.context, SSL.Context)
        assert server.context is server.contexts.current
