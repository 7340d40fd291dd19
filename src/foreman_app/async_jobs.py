"""`AsyncJobs`: what the async job API does, over the store, the worker and the dispatcher.

The `/jobs` and `/queue` handlers only read HTTP and write responses; this object does the
work. Handing the handlers one object, not the eight they would otherwise ask for, is also what
keeps `POST /jobs` fast: Litestar resolves each dependency of a request as a task of its own.
"""

from __future__ import annotations

from typing import Any

from foreman_adapters.webhooks import WebhookHostPolicy, WebhookUrlRefused
from foreman_app.config import Settings
from foreman_app.requests import InvalidRequest
from foreman_app.submissions import Submission
from foreman_app.views import job_listing_view, job_view, queue_view
from foreman_core.admission import require_model
from foreman_core.job import Artifact, Job, JobState, new_job
from foreman_core.ports import Clock, IdGenerator, JobStore, ModelInventory
from foreman_core.webhooks import WebhookDispatcher
from foreman_core.worker import Worker


class AsyncJobs:
    """Submit, read, list and cancel async jobs; fetch their artifacts; describe the queue."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        ids: IdGenerator,
        store: JobStore,
        inventory: ModelInventory,
        worker: Worker,
        webhooks: WebhookDispatcher,
        webhook_policy: WebhookHostPolicy,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._ids = ids
        self._store = store
        self._inventory = inventory
        self._worker = worker
        self._webhooks = webhooks
        self._webhook_policy = webhook_policy

    async def submit(
        self, submission: Submission, payload: bytes, idempotency_key: str | None
    ) -> Job:
        """Queue the job durably and return it (or the earlier job of the same key).

        Raises `ModelNotFound`, `InvalidRequest` for a webhook host the policy refuses,
        `QueueFull` (with the worker's estimate of when to come back) and `IdempotencyConflict`.
        """
        await require_model(self._inventory, submission.model)
        if submission.state_webhook_url is not None:
            try:
                await self._webhook_policy.check(submission.state_webhook_url)
            except WebhookUrlRefused as exc:
                raise InvalidRequest(f"state_webhook_url: {exc}") from None
        job = new_job(
            job_id=self._ids.new_id(),
            kind=submission.kind,
            model=submission.model,
            payload=payload,
            now=self._clock.now(),
            options=submission.options,
            priority=submission.priority,
            sync=False,
            max_attempts=self._settings.max_attempts,
            webhook_url=submission.state_webhook_url,
            idempotency_key=idempotency_key,
        )
        stored = self._worker.enqueue(job, max_queued=self._settings.max_queue)
        self._webhooks.wake()
        return stored

    def job(self, job_id: str) -> dict[str, Any]:
        """The job object; raises `JobNotFound`."""
        return self._full_view(self._store.get(job_id))

    def page(
        self, *, state: JobState | None, model: str | None, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """One page of the listing; a malformed cursor raises ValueError."""
        page = self._store.list(state=state, model=model, limit=limit, cursor=cursor)
        resident = self._worker.resident
        items = [job_listing_view(job, self._position(job, resident)) for job in page.jobs]
        return {"jobs": items, "next_cursor": page.next_cursor}

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job and return its object; raises `InvalidTransition` once finished."""
        cancelled = await self._worker.cancel(job_id)
        self._webhooks.wake()
        return self._full_view(cancelled)

    def artifact(self, job_id: str, name: str) -> Artifact:
        """One artifact; raises `JobNotFound` or `ArtifactNotFound`."""
        return self._store.get_artifact(job_id, name)

    def queue(self) -> dict[str, Any]:
        """What runs now and what waits."""
        return queue_view(self._store.summary(), self._worker.resident, self._clock.now())

    def _full_view(self, job: Job) -> dict[str, Any]:
        position = self._position(job, self._worker.resident)
        artifacts = self._store.list_artifacts(job.id)
        return job_view(job, artifacts, position, self._settings.public_url)

    def _position(self, job: Job, resident: list[str]) -> int | None:
        if job.state != JobState.QUEUED:
            return None
        return self._store.queue_position(job.id, resident)
