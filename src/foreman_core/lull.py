"""`WorkerLull`: the moments when the worker does not need the event loop.

The worker, the HTTP handlers and the webhook dispatcher share one event loop. A webhook
delivery costs CPU on that loop; started while the worker is between two jobs, it delays the
next job's dispatch, and with short jobs that adds up to most of the worker's time. So
background work waits for a lull (ADR 0009): the worker is idle, or it has been waiting on the
target for at least `settle` seconds. A real model keeps the worker waiting for tens of
milliseconds to minutes per job, which is when deliveries go; an answer that comes back at once
is no lull.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

DEFAULT_SETTLE = 0.005
"""Seconds a wait on the target must last before it counts as a lull."""


class WorkerLull:
    """Told by the worker what it is doing; awaited by work that should not get in its way."""

    def __init__(self, settle: float = DEFAULT_SETTLE) -> None:
        self._settle = settle
        self._open = asyncio.Event()
        self._opening: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        """Whether the worker leaves the loop alone right now."""
        return self._open.is_set()

    def idle(self) -> None:
        """The worker has nothing to do: a lull from now on."""
        self._cancel_opening()
        self._open.set()

    def busy(self) -> None:
        """The worker needs the loop: the lull, if any, is over."""
        self._cancel_opening()
        self._open.clear()

    @contextlib.contextmanager
    def waiting_on_target(self) -> Iterator[None]:
        """Around a wait for the target's answer: a lull once it has lasted `settle` seconds,
        over when the block ends."""
        self.busy()
        self._opening = asyncio.get_running_loop().call_later(self._settle, self._open.set)
        try:
            yield
        finally:
            self.busy()

    async def wait(self, timeout: float) -> bool:
        """Wait for a lull, at most `timeout` seconds; whether there is one."""
        if self._open.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._open.wait(), timeout)
        return self._open.is_set()

    def _cancel_opening(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
