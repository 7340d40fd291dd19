"""Jobs put in order (`foreman_core.worker.records`): after a crash, at a stop, after a write
the store refused, and a job started before the store would take it — on the rig of
`worker_rig.py`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from worker_rig import (
    WAIT,
    RecordingStore,
    RefusingStore,
    Rig,
    eventually,
    runs_a_sync_job,
    start_resting,
)

from fakes_worker import (
    DONE_LINE,
    NDJSON,
    T0,
    Aborted,
    Begun,
    Reply,
)
from foreman_core import InMemoryJobStore, JobNotFound, JobState
from foreman_core.lull import WorkerLull
from foreman_core.ports import AbortReason
from foreman_core.worker.loop import SHUTTING_DOWN_MESSAGE
from foreman_core.worker.records import STOPPED_MESSAGE, UNSTORED_MESSAGE

pytestmark = pytest.mark.anyio

STOPPED = Aborted(AbortReason.SHUTDOWN, STOPPED_MESSAGE)


# -- a crash -----------------------------------------------------------------------------


async def test_jobs_interrupted_by_a_crash_are_recovered_at_start(rig: Rig) -> None:
    interrupted, _ = rig.submit()
    orphaned_sync, _ = rig.submit(sync=True)
    for _ in range(2):
        rig.store.claim_next(resident=[], now=T0, max_wait=timedelta(minutes=10))

    await rig.start()

    done = await rig.settled(interrupted.id, JobState.DONE)
    assert done.attempts == 2  # the interrupted attempt counts
    failed = await rig.settled(orphaned_sync.id, JobState.FAILED)
    assert failed.error == InMemoryJobStore.INTERRUPTED


# -- a stop ------------------------------------------------------------------------------


async def test_stop_requeues_a_running_async_job_after_the_grace(rig: Rig) -> None:
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    worker = await rig.start()
    job, _ = rig.submit()
    await eventually(reply.paused.is_set, "the request")

    await worker.stop(0)

    assert rig.loop is not None and rig.loop.done()
    requeued = rig.store.get(job.id)
    assert (requeued.state, requeued.attempts) == (JobState.QUEUED, 1)
    assert requeued.error == STOPPED_MESSAGE
    assert rig.target.requests[0].exited_with is asyncio.CancelledError


async def test_stop_requeues_an_async_job_even_on_its_last_attempt(rig: Rig) -> None:
    # A stop is not the job's failure: it runs again after the restart (attempts 2 of 1 then).
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    worker = await rig.start()
    job, _ = rig.submit(max_attempts=1)
    await eventually(reply.paused.is_set, "the request")

    await worker.stop(0)

    requeued = rig.store.get(job.id)
    assert (requeued.state, requeued.attempts, requeued.max_attempts) == (JobState.QUEUED, 1, 1)


async def test_stop_lets_the_running_job_finish_within_the_grace(rig: Rig) -> None:
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    worker = await rig.start()
    job, _ = rig.submit()
    await eventually(reply.paused.is_set, "the request")

    stopping = asyncio.create_task(worker.stop(60))
    await asyncio.sleep(0)  # stop() has begun: it claims nothing more
    later, _ = rig.submit()
    reply.resume.set()
    await stopping

    assert rig.store.get(job.id).state == JobState.DONE
    assert rig.store.get(later.id).state == JobState.QUEUED  # nothing claimed after stop
    assert rig.target.requests[0].exited_with is None


async def test_stop_fails_sync_jobs_and_releases_their_clients(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    reply = Reply([first, DONE_LINE], pause_before=1)
    rig.target.script(reply)
    worker = await rig.start()
    running, running_client = rig.submit(sync=True)
    await eventually(reply.paused.is_set, "the request")
    waiting, waiting_client = rig.submit(sync=True)

    await worker.stop(0)

    assert await running_client.whole() == [Begun(200, NDJSON), first, STOPPED]
    assert rig.store.get(running.id).state == JobState.FAILED
    shutting_down = Aborted(AbortReason.SHUTDOWN, SHUTTING_DOWN_MESSAGE)
    assert await waiting_client.whole() == [shutting_down]
    assert rig.store.get(waiting.id).state == JobState.CANCELLED


async def test_stop_fails_a_sync_job_that_was_started_at_once_and_releases_its_client(
    rig: Rig, recording: RecordingStore
) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    reply = Reply([first, DONE_LINE], pause_before=1)
    rig.target.script(reply)
    await start_resting(rig)
    running, client = rig.submit(sync=True)
    await eventually(reply.paused.is_set, "the request")
    assert recording.writes[running.id] == ["add_claimed"]

    assert rig.worker is not None
    await rig.worker.stop(0)

    assert await client.whole() == [Begun(200, NDJSON), first, STOPPED]
    assert rig.store.get(running.id).state == JobState.FAILED


# -- a store that refuses writes ---------------------------------------------------------------


async def test_a_job_whose_end_the_store_refused_is_ended_as_a_crash_would_and_runs_again(
    rig: Rig,
) -> None:
    rig.store = store = RefusingStore(rig.ids)
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    lull = WorkerLull()
    worker = await rig.start(lull=lull)
    first, _ = rig.submit()
    second, _ = rig.submit()
    await reply.paused.wait()
    store.refusing = True  # the answer arrives, but neither done nor failed can be recorded
    reply.resume.set()
    assert await lull.wait(WAIT)  # the worker holds: nothing more is claimed meanwhile

    assert store.get(first.id).state == JobState.WORKING
    assert store.get(second.id).state == JobState.QUEUED
    assert len(rig.target.requests) == 1

    store.refusing = False
    worker.wake()
    redone = await rig.settled(first.id, JobState.DONE)
    assert redone.attempts == 2  # requeued as after a crash, then run again
    assert (await rig.settled(second.id, JobState.DONE)).attempts == 1


async def test_a_sync_job_the_store_will_not_take_gets_an_error_and_its_request_aborted(
    rig: Rig, recording: RecordingStore
) -> None:
    rig.inventory.loaded = ["m"]  # no load: the request itself is in flight when refused
    rig.target.script(Reply(pause_before=0))
    lull = await start_resting(rig)
    recording.refuse_claimed = True
    job, client = rig.submit(sync=True)

    # The fake target answers its head at once, so the response has begun when the store
    # refuses the job; its body ends with the error.
    unstored = Aborted(AbortReason.UNSTORED, UNSTORED_MESSAGE)
    assert await client.whole() == [Begun(200, NDJSON), unstored]
    assert rig.target.requests[0].exited_with is asyncio.CancelledError
    with pytest.raises(JobNotFound):
        rig.store.get(job.id)
    assert await lull.wait(WAIT)
    await runs_a_sync_job(rig)  # the worker goes on


async def test_a_sync_job_that_ends_before_the_store_had_it_is_refused_all_the_same(
    rig: Rig, recording: RecordingStore
) -> None:
    lull = await start_resting(rig)
    recording.refuse_claimed = True
    job, client = rig.submit(sync=True)  # the fake answers the load at once: first write

    assert await client.whole() == [Aborted(AbortReason.UNSTORED, UNSTORED_MESSAGE)]
    with pytest.raises(JobNotFound):
        rig.store.get(job.id)
    assert await lull.wait(WAIT)
    await runs_a_sync_job(rig)  # nothing was left unrecorded to hold the worker
