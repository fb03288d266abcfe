"""The lifecycle's deadlines: idle, the maximum lifetime, a DTLS drain's grace (issue 14).

Under Trio's autojump clock, with the fake conversations of
tests/drivers/test_lifecycle.py: virtual time, exact deadlines. The real
servers over loopback are in tests/drivers/test_idle_and_lifetime.py and
tests/drivers/dtls/test_goodbyes.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio

from tests.drivers.test_lifecycle import (
    SETTINGS,
    FakeConversation,
    Harness,
    autojump,
    echo_until_peer_closes,
    run_one,
    wait_forever,
)
from trio_tls_dtls.core.peer_info import PeerInfo
from trio_tls_dtls.core.settings import ServerSettings

IDLE = 30.0
LIFETIME = 100.0
GRACE = 1.0


def settings(**options: Any) -> ServerSettings:
    """The harness's settings with an idle timeout and a lifetime (or *options*)."""
    return dataclasses.replace(
        SETTINGS, **{"idle_timeout": IDLE, "max_connection_lifetime": LIFETIME, **options}
    )


async def busy(conn: FakeConversation, peer: PeerInfo) -> None:
    """Application data every third of the idle timeout, for ever."""
    while True:
        await trio.sleep(IDLE / 3)
        await conn.exchange(1, 1)


# -- the maximum lifetime ---------------------------------------------------------------


def test_the_lifetime_ends_a_busy_connection() -> None:
    async def main() -> None:
        harness = Harness(busy, settings=settings())
        conn = FakeConversation()
        await run_one(harness, conn)
        record = harness.record
        assert record.reason == "lifetime"
        assert record.duration == pytest.approx(LIFETIME)
        assert record.bytes_in > 0 and conn.closed  # closed as an idle one is: aclose
        assert harness.stats.idle_timeouts == 0

    autojump(main)


def test_idleness_still_ends_a_quiet_connection_first() -> None:
    async def main() -> None:
        harness = Harness(wait_forever, settings=settings())
        await run_one(harness, FakeConversation())
        assert harness.record.reason == "idle_timeout"
        assert harness.record.duration == pytest.approx(IDLE)
        assert harness.stats.idle_timeouts == 1

    autojump(main)


def test_activity_never_pushes_the_deadline_past_the_lifetime() -> None:
    async def active_late(conn: FakeConversation, peer: PeerInfo) -> None:
        began = trio.current_time()
        while trio.current_time() - began < LIFETIME - IDLE / 2:
            await trio.sleep(IDLE / 3)
            await conn.exchange(1, 1)
        # The last activity was after LIFETIME - IDLE / 2: its idle deadline is
        # past the lifetime, which must end the connection all the same.
        await trio.sleep_forever()

    async def main() -> None:
        harness = Harness(active_late, settings=settings())
        await run_one(harness, FakeConversation())
        assert harness.record.reason == "lifetime"
        assert harness.record.duration == pytest.approx(LIFETIME)

    autojump(main)


def test_a_lifetime_without_an_idle_timeout() -> None:
    async def main() -> None:
        harness = Harness(wait_forever, settings=settings(idle_timeout=None))
        await run_one(harness, FakeConversation())
        assert harness.record.reason == "lifetime"
        assert harness.record.duration == pytest.approx(LIFETIME)

    autojump(main)


def test_the_lifetime_counts_from_admission_through_the_handshake() -> None:
    async def main() -> None:
        short = settings(max_connection_lifetime=SETTINGS.handshake_timeout / 2)
        harness = Harness(wait_forever, settings=short)
        await run_one(harness, FakeConversation(handshake="hang"))
        assert harness.record.reason == "lifetime"
        assert harness.record.info is None
        assert harness.stats.handshakes_failed == {}

    autojump(main)


# -- a drain's grace (DTLS) -------------------------------------------------------------


def test_with_a_grace_a_drain_cuts_the_silent_after_it_and_says_goodbye_twice() -> None:
    async def main() -> None:
        harness = Harness(wait_forever, goodbye_grace=GRACE)
        silent = FakeConversation()
        polite = FakeConversation()
        handlers = {silent: wait_forever, polite: echo_until_peer_closes}

        async def handler(conn: FakeConversation, peer: PeerInfo) -> None:
            await handlers[conn](conn, peer)

        harness.handler = handler
        harness.lifecycle.handler = handler
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, silent)
            nursery.start_soon(run_one, harness, polite)
            await trio.sleep(1)
            began = trio.current_time()
            await harness.drain()
            assert trio.current_time() - began == pytest.approx(GRACE)
        assert [r.reason for r in harness.records] == ["drained", "drained"]
        assert (polite.goodbyes, silent.goodbyes) == (1, 2)  # the silent one: again at GRACE/2

    autojump(main)


def test_with_a_grace_a_drain_whose_peers_all_answer_does_not_wait_for_it() -> None:
    async def main() -> None:
        harness = Harness(echo_until_peer_closes, goodbye_grace=GRACE)
        conns = [FakeConversation() for _ in range(3)]
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(run_one, harness, conn)
            await trio.sleep(1)
            began = trio.current_time()
            await harness.drain()
            assert trio.current_time() - began < GRACE / 2
        assert [conn.goodbyes for conn in conns] == [1, 1, 1]

    autojump(main)


def test_without_a_grace_a_drain_waits_for_the_silent() -> None:
    """TLS: close_notify is delivered, the handler decides; the service bounds the drain."""

    async def main() -> None:
        harness = Harness(wait_forever)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, harness, FakeConversation())
            await trio.sleep(1)
            with trio.move_on_after(IDLE / 2) as waited:
                await harness.drain()
            assert waited.cancelled_caught
            nursery.cancel_scope.cancel()

    autojump(main)
