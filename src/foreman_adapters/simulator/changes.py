"""Wake-ups for code waiting on the simulator's state (a notify-all condition without a lock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StateChanges:
    """Waiters sleep until `notify()`, then re-check their predicate.

    The simulator runs on one event loop, so checking a predicate and acting on it cannot be
    interleaved; no lock is needed. The event is re-made when the running loop changes, so one
    simulator object may outlive a test's loop.
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        """Wake every waiter."""
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return as soon as `predicate()` is true, checking after every change."""
        while not predicate():
            await self._current().wait()

    def _current(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._event is None or self._loop is not loop:
            self._event, self._loop = asyncio.Event(), loop
        return self._event
