"""`SyncJobs`: an Ollama chat/generate request admitted as a sync job the worker answers live.

The handler of `/api/chat` and `/api/generate` takes this one object rather than the five it
wraps: Litestar resolves each dependency of a request as a task of its own (see AsyncJobs).
"""

from __future__ import annotations

from typing import Any

from foreman_app.config import Settings
from foreman_app.live import LiveResponse
from foreman_core.admission import require_model
from foreman_core.job import INTERACTIVE_PRIORITY, Job, new_job
from foreman_core.ports import Clock, IdGenerator, ModelInventory
from foreman_core.worker import Worker


class SyncJobs:
    """Queue an interactive request and hand back the live response the worker will feed."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        ids: IdGenerator,
        inventory: ModelInventory,
        worker: Worker,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._ids = ids
        self._inventory = inventory
        self.worker = worker

    async def admit(
        self, kind: str, body: bytes, fields: dict[str, Any]
    ) -> tuple[Job, LiveResponse]:
        """Store `body` as a sync job of `kind` and wake the worker; the job and its response.

        Raises `ModelNotFound` (or `TargetUnreachable` when Ollama cannot be asked) and
        `QueueFull` (see `Worker.enqueue`).
        """
        await require_model(self._inventory, fields["model"])
        options = fields.get("options")
        job = new_job(
            job_id=self._ids.new_id(),
            kind=kind,
            model=fields["model"],
            payload=body,
            now=self._clock.now(),
            options=options if isinstance(options, dict) else None,
            priority=INTERACTIVE_PRIORITY,
            sync=True,
            max_attempts=self._settings.max_attempts,
        )
        live = LiveResponse()
        self.worker.enqueue(job, max_queued=self._settings.max_queue, client=live)
        return job, live
