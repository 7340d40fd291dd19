"""WorkerLull: when the worker leaves the event loop to others."""

from __future__ import annotations

import asyncio

import pytest

from foreman_core.lull import WorkerLull

pytestmark = pytest.mark.anyio

WAIT = 10.0


async def let_callbacks_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_idle_is_a_lull_at_once_and_busy_ends_it() -> None:
    lull = WorkerLull(settle=3600)
    assert not lull.is_open
    lull.idle()
    assert lull.is_open
    assert await lull.wait(0)
    lull.busy()
    assert not lull.is_open


async def test_a_wait_on_the_target_becomes_a_lull_once_it_has_settled() -> None:
    lull = WorkerLull(settle=0.001)
    lull.idle()
    with lull.waiting_on_target():
        assert not lull.is_open  # the request just went out: the answer may come at once
        assert await lull.wait(WAIT)
    assert not lull.is_open


async def test_an_answer_before_the_wait_settles_leaves_no_lull() -> None:
    lull = WorkerLull(settle=0)
    with lull.waiting_on_target():
        pass  # answered before the loop ran again
    await let_callbacks_run()
    assert not lull.is_open
    assert not await lull.wait(0)
