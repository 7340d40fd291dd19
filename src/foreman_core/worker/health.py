"""`TargetHealth`: what the worker believes of the target, between jobs and during one.

Between jobs, queued work waits while the target is unreachable instead of spending its
attempts on it (ADR 0011); during a job, a request that has received nothing while the target
also fails the inventory's polls is given up after a grace (ADR 0012).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from foreman_core.ports import Clock, ModelInventory

TARGET_GONE_GRACE = timedelta(seconds=30)
"""How long the target may send nothing for the running job while it also fails the
inventory's polls, before the job's request is given up as unreachable (ADR 0012)."""


class TargetHealth:
    """The target's health as the worker sees it: from its attempts and the inventory's polls."""

    def __init__(
        self,
        inventory: ModelInventory,
        clock: Clock,
        log: logging.Logger,
        grace: timedelta = TARGET_GONE_GRACE,
    ) -> None:
        self._inventory = inventory
        self._clock = clock
        self._log = log
        self.grace = grace
        # An attempt found the target unreachable: poll it before the next claim.
        self._in_doubt = False
        # The target was down when last looked at: the log tells each change once.
        self._was_down = False
        # Since when the inventory has been degraded while a job ran (None: it answers).
        self._unanswered_since: datetime | None = None

    def doubt(self) -> None:
        """An attempt found the target unreachable: look again before the next claim."""
        self._in_doubt = True

    @property
    def trusted(self) -> bool:
        """Neither in doubt nor degraded: a new job may go to the target at once."""
        return not self._in_doubt and not self._inventory.degraded

    async def down(self) -> bool:
        """Whether the target is unreachable now, polled first if an attempt put it in doubt."""
        if self._in_doubt:
            self._in_doubt = False
            await self._inventory.refresh()
        down = self._inventory.degraded
        if down != self._was_down:
            self._was_down = down
            if down:
                self._log.warning("worker: Ollama is unreachable; queued jobs wait for it")
            else:
                self._log.info("worker: Ollama answers again; dispatching")
        return down

    def gone(self, silent_since: datetime) -> bool:
        """Whether the running job's target, silent for it since `silent_since`, has also not
        answered the inventory's polls for `grace`: a hung or vanished Ollama (ADR 0012)."""
        now = self._clock.now()
        if not self._inventory.degraded:
            self._unanswered_since = None
            return False
        if self._unanswered_since is None:
            self._unanswered_since = now
        return now - self._unanswered_since >= self.grace and now - silent_since >= self.grace
