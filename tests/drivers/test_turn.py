"""Turn: one task at a time, in arrival order, handed straight to the next waiter.

The TLS stream's send side takes a turn for every record it sends; these
tests check the properties it relies on. They wait on
trio.testing.wait_all_tasks_blocked, never on time.
"""

from __future__ import annotations

import trio
import trio.testing

from trio_tls_dtls.drivers.conflict_detector import Turn


async def test_a_free_turn_is_taken_without_a_schedule_point() -> None:
    turn = Turn()
    with trio.CancelScope() as scope:
        scope.cancel()
        await turn.take()  # a cancelled scope does not stop it: no checkpoint
    assert turn.locked()
    assert not turn.take_now()
    turn.give_back()
    assert not turn.locked()
    assert turn.take_now()


async def test_waiters_get_the_turn_in_the_order_they_came() -> None:
    turn = Turn()
    order: list[int] = []

    async def worker(n: int) -> None:
        await turn.take()
        try:
            order.append(n)
            await trio.lowlevel.checkpoint()  # others run, and must keep waiting
            order.append(n)
        finally:
            turn.give_back()

    assert turn.take_now()
    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(worker, n)
            await trio.testing.wait_all_tasks_blocked()
        assert order == []  # all parked behind us
        turn.give_back()
        # The turn went to the first waiter at once: a latecomer cannot take it.
        assert turn.locked()
        assert not turn.take_now()
    assert order == [0, 0, 1, 1, 2, 2]
    assert not turn.locked()
    assert turn._queue is None  # no queue kept once nobody waits


async def test_a_cancelled_waiter_never_gets_the_turn() -> None:
    turn = Turn()
    got: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await turn.take()
            got.append(name)
            turn.give_back()

    assert turn.take_now()
    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        turn.give_back()
    assert got == ["second"]
    assert first.cancelled_caught
    assert not turn.locked()
