"""The worker's loop (`foreman_core.worker.loop`): what it claims and when, one request at a
time, an unreachable target (`health`), a sync job started at once (ADR 0015), cancelling
queued jobs, the lull and a full queue — on the rig of `worker_rig.py`."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from worker_rig import (
    CHAT_BODY,
    OTHER_MODEL_BODY,
    WAIT,
    RecordingStore,
    Rig,
    eventually,
    start_resting,
)

from fakes_worker import (
    DONE_LINE,
    END,
    NDJSON,
    T0,
    Aborted,
    Begun,
    FakeClient,
    FakeInventory,
    Refuse,
    Reply,
)
from foreman_core import (
    JobNotFound,
    JobState,
    QueueFull,
    RetryPolicy,
    TargetBusy,
    TargetUnreachable,
    new_job,
)
from foreman_core.lull import WorkerLull
from foreman_core.ports import AbortReason
from foreman_core.worker import Worker

pytestmark = pytest.mark.anyio


# -- what is claimed ---------------------------------------------------------------------


async def test_sync_job_without_a_watching_client_never_reaches_the_target(rig: Rig) -> None:
    worker = await rig.start()
    job, _ = rig.submit()
    orphan = new_job(
        job_id=rig.ids.new_id(), kind="chat", model="m", payload=b"{}", now=T0, sync=True
    )
    rig.store.add(orphan)
    worker.wake()
    assert (await rig.settled(orphan.id, JobState.CANCELLED)).state == JobState.CANCELLED
    await rig.settled(job.id, JobState.DONE)
    assert len(rig.target.requests) == 1


async def test_a_cancelled_queued_job_never_reaches_the_target(rig: Rig) -> None:
    blocker = Reply(pause_before=0)
    rig.target.script(blocker)
    worker = await rig.start()
    first, _ = rig.submit()
    await eventually(blocker.paused.is_set, "the first request")
    queued_async, _ = rig.submit(body={**CHAT_BODY, "messages": [{"role": "user", "content": "A"}]})
    queued_sync, client = rig.submit(sync=True)

    assert (await worker.cancel(queued_async.id)).state == JobState.CANCELLED
    assert (await worker.cancel(queued_sync.id)).state == JobState.CANCELLED
    assert await client.whole() == [Aborted(AbortReason.CANCELLED, "job cancelled")]

    blocker.resume.set()
    await rig.settled(first.id, JobState.DONE)
    last, _ = rig.submit()
    await rig.settled(last.id, JobState.DONE)
    assert len(rig.target.requests) == 2  # first and last only
    assert rig.store.get(queued_async.id).state == JobState.CANCELLED


# -- one at a time -----------------------------------------------------------------------


async def test_at_most_one_request_is_in_flight(rig: Rig) -> None:
    blocker = Reply(pause_before=0)
    rig.target.script(blocker)
    await rig.start()
    submitted = [
        rig.submit(body={**CHAT_BODY, "model": model}, sync=sync)
        for model, sync in [("a", False), ("b", True), ("a", True), ("c", False), ("b", False)]
    ]
    await eventually(blocker.paused.is_set, "the first request")
    assert rig.target.in_flight == 1
    assert rig.store.count_queued() == 4
    blocker.resume.set()

    for job, client in submitted:
        if job.sync:
            await client.whole()
        await rig.settled(job.id, JobState.DONE)
    assert rig.target.max_in_flight == 1
    assert len(rig.target.calls) == 5 + len(rig.target.loads)


async def test_estimated_wait_uses_recent_job_durations(rig: Rig) -> None:
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    worker = await rig.start()
    assert (worker.estimated_wait(0), worker.estimated_wait(3)) == (1.0, 3.0)
    job, _ = rig.submit()
    await eventually(reply.paused.is_set, "the request")
    assert worker.running_job_id == job.id
    rig.clock.advance(4)
    reply.resume.set()
    await rig.settled(job.id, JobState.DONE)
    assert worker.running_job_id is None
    assert worker.estimated_wait(2) == 8.0


# -- an unreachable target -------------------------------------------------------------------


async def test_queued_jobs_wait_while_the_target_is_unreachable_without_spending_attempts(
    rig: Rig,
) -> None:
    lull = WorkerLull()
    rig.inventory.degraded = True
    worker = await rig.start(lull=lull)
    job, _ = rig.submit()
    assert await lull.wait(WAIT)  # the worker looked at the queue and went idle

    assert rig.target.calls == []
    assert (rig.store.get(job.id).state, rig.store.get(job.id).attempts) == (JobState.QUEUED, 0)

    rig.inventory.degraded = False
    worker.wake()
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 1


async def test_an_unreachable_target_is_polled_before_the_next_claim_and_holds_the_queue(
    rig: Rig,
) -> None:
    lull = WorkerLull()
    rig.inventory.target_down = True
    rig.target.script(Refuse(TargetUnreachable("connection refused")))
    worker = await rig.start(lull=lull)  # no backoff: without the hold, retried at once
    first, _ = rig.submit()
    second, _ = rig.submit()
    await rig.settled(first.id, JobState.QUEUED, attempts=1)
    assert await lull.wait(WAIT)

    assert rig.inventory.refreshes == 1
    assert len(rig.target.requests) == 1
    assert rig.store.get(first.id).attempts == 1
    assert rig.store.get(second.id).attempts == 0

    rig.inventory.target_down = rig.inventory.degraded = False
    worker.wake()
    assert (await rig.settled(first.id, JobState.DONE)).attempts == 2
    assert (await rig.settled(second.id, JobState.DONE)).attempts == 1


async def test_a_waiting_client_is_served_even_while_the_target_is_unreachable(rig: Rig) -> None:
    rig.inventory.degraded = True
    await rig.start()
    job, client = rig.submit(sync=True)

    assert await client.whole() == [Begun(200, NDJSON), DONE_LINE, END]
    assert (await rig.settled(job.id, JobState.DONE)).attempts == 1


class WatchedInventory(FakeInventory):
    """Counts how often the worker looks at `degraded`."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0
        self._degraded = False

    @property  # type: ignore[override]
    def degraded(self) -> bool:
        self.looks += 1
        return self._degraded

    @degraded.setter
    def degraded(self, value: bool) -> None:
        self._degraded = value


async def test_a_running_job_whose_target_went_silent_and_unreachable_is_retried(
    rig: Rig,
) -> None:
    reply = Reply(pause_before=0)  # the request is sent; nothing ever comes back
    rig.target.script(reply)
    worker = await rig.start(running_recheck=0.001)
    job, _ = rig.submit()
    await reply.paused.wait()
    rig.inventory.target_down = rig.inventory.degraded = True

    def given_up() -> bool:
        rig.clock.advance(10)  # fake time passes only here: 10 s per look
        return rig.store.get(job.id).state == JobState.QUEUED

    await eventually(given_up, "the silent request to be given up")
    requeued = rig.store.get(job.id)
    assert requeued.attempts == 1
    assert "Ollama stopped answering" in (requeued.error or "")
    assert rig.target.requests[0].exited_with is asyncio.CancelledError

    rig.inventory.target_down = rig.inventory.degraded = False
    worker.wake()
    assert (await rig.settled(job.id, JobState.DONE)).attempts == 2


async def test_a_slow_target_that_answers_polls_keeps_its_job_however_long_it_takes() -> None:
    rig = Rig()
    rig.inventory = inventory = WatchedInventory()
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    await rig.start(running_recheck=0.001)
    try:
        job, _ = rig.submit()
        await reply.paused.wait()
        rig.clock.advance(24 * 3600)
        looks = inventory.looks
        await eventually(lambda: inventory.looks >= looks + 3, "the worker to look again")

        reply.resume.set()
        assert (await rig.settled(job.id, JobState.DONE)).attempts == 1
    finally:
        await rig.close()


# -- a sync job that finds the worker resting (ADR 0015) ------------------------------------


def models_requested(rig: Rig) -> list[str]:
    """The model of each request (not load) the target received, in order."""
    return [json.loads(call.body)["model"] for call in rig.target.requests]


async def test_a_sync_job_that_finds_the_worker_resting_is_sent_before_it_is_stored(
    rig: Rig, recording: RecordingStore
) -> None:
    await start_resting(rig)  # its claim found nothing
    job, client = rig.submit(sync=True)

    assert await client.whole() == [Begun(200, NDJSON), DONE_LINE, END]
    assert recording.writes[job.id] == ["add_claimed"]  # the answer before the bookkeeping
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 1
    assert recording.writes[job.id] == ["add_claimed", "save_later"]
    assert recording.requests_when_stored[job.id] == 1  # the request went out first
    assert rig.target.max_in_flight == 1


async def test_a_sync_job_behind_an_eligible_queued_job_waits_its_turn_in_the_store(
    rig: Rig, recording: RecordingStore
) -> None:
    await start_resting(rig)
    rig.submit()  # async, eligible, and the loop has not claimed it yet
    second, client = rig.submit(sync=True, body=OTHER_MODEL_BODY)

    await client.whole()
    await rig.settled(second.id, JobState.DONE)
    assert recording.writes[second.id][:2] == ["add", "claim_next"]
    assert recording.requests_when_stored[second.id] == 0  # queued before anything ran
    assert models_requested(rig) == ["m", "s"]  # first come, first served


async def test_a_sync_job_waits_behind_a_job_whose_backoff_has_just_ended(
    rig: Rig, recording: RecordingStore
) -> None:
    rig.target.script(Refuse(TargetBusy(503, b"busy")))
    lull = WorkerLull()
    await rig.start(policy=RetryPolicy(base=timedelta(seconds=5)), lull=lull)
    retried, _ = rig.submit()
    await rig.settled(retried.id, JobState.QUEUED, attempts=1)
    assert await lull.wait(WAIT)  # resting until the backoff ends, 5 s from now
    rig.clock.advance(6)  # it has ended, and the loop has not noticed yet

    job, client = rig.submit(sync=True, body=OTHER_MODEL_BODY)
    await client.whole()
    assert recording.writes[job.id][:2] == ["add", "claim_next"]
    assert (await rig.settled(retried.id, JobState.DONE)).attempts == 2
    assert models_requested(rig) == ["m", "m", "s"]  # the retry went first


# -- the lull, a full queue ------------------------------------------------------------------


async def test_the_worker_has_a_lull_while_idle_and_while_the_target_keeps_it_waiting(
    rig: Rig,
) -> None:
    lull = WorkerLull(settle=0.001)
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    await rig.start(lull=lull)
    assert await lull.wait(WAIT)  # nothing queued: idle

    job, _ = rig.submit()
    await reply.paused.wait()  # the request is at the target, which has not answered yet
    assert await lull.wait(WAIT)

    reply.resume.set()
    await rig.settled(job.id, JobState.DONE)
    assert await lull.wait(WAIT)  # idle again


async def test_a_full_queue_refuses_with_an_estimate_and_forgets_the_client() -> None:
    rig = Rig()
    worker = Worker(
        store=rig.store,
        target=rig.target,
        inventory=rig.inventory,
        clock=rig.clock,
        policy=RetryPolicy(),
        max_wait=timedelta(minutes=10),
    )
    rig.submit()  # queued; the worker is not running, so it stays queued
    refused = new_job(
        job_id=rig.ids.new_id(),
        kind="chat",
        model="llama3.2",
        payload=json.dumps(CHAT_BODY).encode(),
        now=rig.clock.now(),
        sync=True,
    )

    with pytest.raises(QueueFull) as full:
        worker.enqueue(refused, max_queued=1, client=FakeClient())

    assert full.value.retry_after is not None and full.value.retry_after >= 1
    assert refused.id not in worker._clients
    with pytest.raises(JobNotFound):
        rig.store.get(refused.id)
