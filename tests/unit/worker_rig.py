"""The worker's test rig: a worker on the in-memory store and the fakes of
`tests/fakes_worker.py`, stores that misbehave, and helpers; its fixtures are in `conftest.py`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fakes_worker import (
    DONE_LINE,
    END,
    NDJSON,
    Begun,
    FakeClient,
    FakeClock,
    FakeInventory,
    FakeTarget,
)
from foreman_core import InMemoryJobStore, Job, JobState, RetryPolicy, UlidGenerator, new_job
from foreman_core.lull import WorkerLull
from foreman_core.worker import Worker

CHAT_BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
OTHER_MODEL_BODY: dict[str, Any] = {"model": "s", "messages": [{"role": "user", "content": "hi"}]}


# -- the rig -----------------------------------------------------------------------------

WAIT = 10.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition()` holds."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    """A worker on fakes; `start()` runs its loop in a task."""

    def __init__(self) -> None:
        self.ids = UlidGenerator()
        self.store = InMemoryJobStore(self.ids)
        self.target = FakeTarget()
        self.inventory = FakeInventory()
        self.clock = FakeClock()
        self.worker: Worker | None = None
        self.loop: asyncio.Task[None] | None = None
        self.clients: list[FakeClient] = []

    async def start(
        self,
        policy: RetryPolicy | None = None,
        max_wait: timedelta = timedelta(minutes=10),
        lull: WorkerLull | None = None,
        running_recheck: float = 1.0,
    ) -> Worker:
        """Build the worker and run its loop. No polling: only wake() and backoffs wake it."""
        self.worker = Worker(
            store=self.store,
            target=self.target,
            inventory=self.inventory,
            clock=self.clock,
            policy=policy or RetryPolicy(base=timedelta(0)),
            max_wait=max_wait,
            idle_recheck=3600.0,
            lull=lull,
            running_recheck=running_recheck,
        )
        self.loop = asyncio.create_task(self.worker.run())
        return self.worker

    def new_job(
        self,
        *,
        sync: bool = False,
        body: dict[str, Any] | None = None,
        kind: str = "chat",
        max_attempts: int = 3,
    ) -> Job:
        """A new job of `kind` for the request `body` (a chat to model m by default)."""
        request = body or CHAT_BODY
        return new_job(
            job_id=self.ids.new_id(),
            kind=kind,
            model=request["model"],
            payload=json.dumps(request).encode(),
            now=self.clock.now(),
            options=request.get("options"),
            sync=sync,
            max_attempts=max_attempts,
        )

    def submit(self, *, sync: bool = False, **job: Any) -> tuple[Job, FakeClient]:
        """Queue a job as a handler would, a sync one with a waiting client (see `new_job`)."""
        added = self.new_job(sync=sync, **job)
        client = FakeClient()
        if self.worker is None:
            self.store.add(added)
        elif sync:
            self.clients.append(client)
            self.worker.enqueue(added, max_queued=None, client=client)
        else:
            self.worker.enqueue(added, max_queued=None)
        return added, client

    async def settled(self, job_id: str, *states: JobState, attempts: int = 0) -> Job:
        """The job once it is in one of `states` after at least `attempts` dispatches, and the
        worker has let go of it."""
        assert self.worker is not None
        worker = self.worker

        def arrived() -> bool:
            job = self.store.get(job_id)
            return (
                job.state in states and job.attempts >= attempts and worker.running_job_id != job_id
            )

        await eventually(arrived, f"job {job_id} to reach {states}")
        return self.store.get(job_id)

    async def close(self) -> None:
        """Stop the worker and its loop; every client was fed in the port's order."""
        if self.worker is not None:
            await self.worker.stop(0)
        if self.loop is not None:
            await self.loop
        assert [client.misfed for client in self.clients if client.misfed] == []


# -- stores that misbehave ---------------------------------------------------------------


class RefusingStore(InMemoryJobStore):
    """Refuses every save while `refusing` is set, as a locked or full database would."""

    refusing = False

    def save(self, job: Job, **kwargs: Any) -> Job:
        if self.refusing:
            raise RuntimeError("database is locked")
        return super().save(job, **kwargs)


class RecordingStore(InMemoryJobStore):
    """Notes which writes each job went through, and how many requests (loads too) the target
    had seen when the job was first stored; `refuse_claimed` makes add_claimed fail once."""

    def __init__(self, ids: UlidGenerator, target: FakeTarget) -> None:
        super().__init__(ids)
        self.target = target
        self.writes: dict[str, list[str]] = {}
        self.requests_when_stored: dict[str, int] = {}
        self.refuse_claimed = False

    def _note(self, job: Job, write: str) -> None:
        self.writes.setdefault(job.id, []).append(write)
        self.requests_when_stored.setdefault(job.id, len(self.target.calls))

    def add(self, job: Job, **kwargs: Any) -> Job:
        self._note(job, "add")
        return super().add(job, **kwargs)

    def add_claimed(self, job: Job, claimed: Job) -> Job:
        self._note(job, "add_claimed")
        if self.refuse_claimed:
            self.refuse_claimed = False
            raise RuntimeError("disk full")
        return super().add_claimed(job, claimed)

    def claim_next(self, **kwargs: Any) -> Job | None:
        claimed = super().claim_next(**kwargs)
        if claimed is not None:
            self._note(claimed, "claim_next")
        return claimed

    def save_later(self, job: Job, **kwargs: Any) -> None:
        self._note(job, "save_later")
        super().save_later(job, **kwargs)


async def start_resting(rig: Rig) -> WorkerLull:
    """Start the rig's worker and wait until its loop rests; its lull."""
    lull = WorkerLull()
    await rig.start(lull=lull)
    assert await lull.wait(WAIT)
    return lull


async def runs_a_sync_job(rig: Rig) -> None:
    """A new sync job gets its answer and is done on its first attempt."""
    job, client = rig.submit(sync=True)
    assert await client.whole() == [Begun(200, NDJSON), DONE_LINE, END]
    assert (await rig.settled(job.id, JobState.DONE)).attempts == 1
