"""`SyncJobs`: an Ollama chat/generate request admitted as a sync job the worker answers live.

The handler of `/api/chat` and `/api/generate` takes this one object rather than the six it
wraps: Litestar resolves each dependency of a request as a task of its own (see AsyncJobs).
"""

from __future__ import annotations

from typing import Any

from foreman_app.config import Settings
from foreman_core.admission import require_model
from foreman_core.errors import QueueFull
from foreman_core.job import INTERACTIVE_PRIORITY, Job, new_job
from foreman_core.ports import Clock, IdGenerator, JobStore, ModelInventory
from foreman_core.worker import LiveResponse, Worker


class SyncJobs:
    """Queue an interactive request and hand back the live response the worker will feed."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        ids: IdGenerator,
        store: JobStore,
        inventory: ModelInventory,
        worker: Worker,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._ids = ids
        self._store = store
        self._inventory = inventory
        self.worker = worker

    async def admit(
        self, kind: str, body: bytes, fields: dict[str, Any]
    ) -> tuple[Job, LiveResponse]:
        """Store `body` as a sync job of `kind` and wake the worker; the job and its response.

        Raises `ModelNotFound` (or `TargetUnreachable` when Ollama cannot be asked) and
        `QueueFull` with the worker's estimate of when a slot frees up.
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
        live = self.worker.watch(job.id)
        try:
            self._store.add(job, max_queued=self._settings.max_queue)
        except QueueFull as full:
            self.worker.forget(job.id)
            raise QueueFull(full.limit, self.worker.estimated_wait(1)) from None
        except BaseException:
            self.worker.forget(job.id)  # never stored: nobody will feed this response
            raise
        self.worker.wake()
        return job, live
