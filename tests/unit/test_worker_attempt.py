"""One attempt (`foreman_core.worker.attempt`): the relay or the kept answer, the load, target
failures and retries, and a running job cancelled — on the rig of `worker_rig.py`."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from worker_rig import (
    CHAT_BODY,
    Rig,
    eventually,
)

from fakes_worker import (
    DONE_LINE,
    END,
    JSON,
    LOADED,
    NDJSON,
    T0,
    Aborted,
    Begun,
    Refuse,
    Rejected,
    Reply,
)
from foreman_core import (
    InvalidTransition,
    JobNotFound,
    JobState,
    RetryPolicy,
    TargetBrokeStream,
    TargetBusy,
    TargetRejected,
    TargetUnreachable,
)
from foreman_core.job import cancel as cancel_job
from foreman_core.payloads import load_body
from foreman_core.ports import AbortReason

pytestmark = pytest.mark.anyio


# -- sync relay --------------------------------------------------------------------------


async def test_sync_job_relays_each_chunk_byte_exact_as_it_arrives(rig: Rig) -> None:
    chunks = [
        b'{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}\n',
        b'{"model":"m","message":{"role":"assistant","content":"lo \\u00e9"},"done":false}\n',
        DONE_LINE,
    ]
    reply = Reply(chunks, pause_before=1)
    rig.target.script(reply)
    await rig.start()
    job, client = rig.submit(sync=True)

    assert await client.upto(2) == [Begun(200, NDJSON), chunks[0]]
    assert reply.paused.is_set()  # the first chunk came through while the target held the rest
    reply.resume.set()
    assert await client.whole() == [Begun(200, NDJSON), *chunks, END]

    done = await rig.settled(job.id, JobState.DONE)
    assert (done.attempts, done.result) == (1, None)
    assert rig.store.list_artifacts(job.id) == []
    assert rig.target.requests[0].body == job.payload  # the client's bytes, unchanged


# -- async result ------------------------------------------------------------------------


async def test_async_job_keeps_the_whole_response_and_its_artifacts(rig: Rig) -> None:
    answer = (
        b'{"model":"m","message":{"role":"assistant","content":"Hello",'
        b'"thinking":"hmm"},"done":true,"eval_count":3}'
    )
    rig.target.script(Reply([answer[:20], answer[20:]], content_type=JSON))
    await rig.start()
    body = {**CHAT_BODY, "priority": 3, "kind": "chat", "state_webhook_url": "http://x/"}
    job, _ = rig.submit(body=body)

    done = await rig.settled(job.id, JobState.DONE)
    assert done.result == answer
    artifacts = {a.name: a.data for a in rig.store.list_artifacts(job.id)}
    assert artifacts == {"completion": b"Hello", "thinking": b"hmm"}
    sent = json.loads(rig.target.requests[0].body)
    assert sent == {**CHAT_BODY, "stream": False}


async def test_generate_job_is_sent_as_generate(rig: Rig) -> None:
    rig.target.script(Reply([b'{"model":"m","response":"ok","done":true}'], content_type=JSON))
    await rig.start()
    job, _ = rig.submit(kind="generate", body={"model": "m", "prompt": "say ok"})
    await rig.settled(job.id, JobState.DONE)
    assert rig.target.requests[0].kind == "generate"
    assert rig.store.get_artifact(job.id, "completion").data == b"ok"


# -- loading -----------------------------------------------------------------------------


async def test_a_job_for_a_resident_model_is_not_loaded(rig: Rig) -> None:
    rig.inventory.loaded = ["m"]
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    await rig.start()
    job, _ = rig.submit()

    await eventually(reply.paused.is_set, "the request")
    assert rig.store.get(job.id).state == JobState.WORKING
    reply.resume.set()
    await rig.settled(job.id, JobState.DONE)
    assert rig.target.loads == []


async def test_a_job_for_another_model_is_loaded_first_with_its_options(rig: Rig) -> None:
    rig.inventory.loaded = ["m"]
    load = Reply([LOADED], content_type=JSON, pause_before=0)
    rig.target.script_loads(load)
    worker = await rig.start()
    body = {**CHAT_BODY, "model": "n", "options": {"num_ctx": 8192}, "keep_alive": "1h"}
    job, _ = rig.submit(body=body)

    await eventually(load.paused.is_set, "the load request")
    assert rig.store.get(job.id).state == JobState.LOADING
    assert rig.target.requests == []  # the real request waits for the load
    load.resume.set()
    await rig.settled(job.id, JobState.DONE)

    assert [call.body for call in rig.target.calls] == [
        load_body(job),
        rig.target.requests[0].body,
    ]
    assert worker.resident == ["n:latest|num_ctx=8192", "m:latest"]

    again, _ = rig.submit(body=body)
    await rig.settled(again.id, JobState.DONE)
    assert len(rig.target.loads) == 1  # still resident: no second load


async def test_the_bare_name_of_a_model_loaded_with_other_options_is_not_resident(
    rig: Rig,
) -> None:
    rig.inventory.loaded = ["m:latest"]
    worker = await rig.start()
    job, _ = rig.submit(body={**CHAT_BODY, "options": {"num_ctx": 4096, "temperature": 0}})
    await rig.settled(job.id, JobState.DONE)
    assert worker.resident == ["m:latest|num_ctx=4096"]


# -- failures and retries ----------------------------------------------------------------


async def test_retryable_failures_are_retried_until_success(rig: Rig) -> None:
    rig.target.script(
        Refuse(TargetUnreachable("connection refused")),
        Refuse(TargetBusy(503, b'{"error":"busy"}')),
        Reply([b'{"message":{"content":"ok"},"done":true}'], content_type=JSON),
    )
    await rig.start()
    job, _ = rig.submit()
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 3
    assert len(rig.target.requests) == 3


async def test_a_retry_waits_for_its_backoff(rig: Rig) -> None:
    rig.target.script(Refuse(TargetBusy(429, b"slow down")))
    worker = await rig.start(policy=RetryPolicy())
    job, _ = rig.submit()

    queued = await rig.settled(job.id, JobState.QUEUED, attempts=1)
    assert (queued.attempts, queued.not_before) == (1, T0 + timedelta(seconds=1))
    assert len(rig.target.requests) == 1
    rig.clock.advance(1)
    worker.wake()
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 2


async def test_a_rejection_is_relayed_at_once_without_retry(rig: Rig) -> None:
    body = b'{"error":"invalid format"}'
    rig.target.script(Refuse(TargetRejected(400, body, "application/json; charset=utf-8")))
    await rig.start()
    job, client = rig.submit(sync=True)

    assert await client.whole() == [Rejected(400, body, "application/json; charset=utf-8")]
    failed = await rig.settled(job.id, JobState.FAILED)
    assert failed.attempts == 1
    assert len(rig.target.requests) == 1


async def test_retries_that_run_out_fail_the_job_and_its_client(rig: Rig) -> None:
    rig.target.script(*[Refuse(TargetUnreachable("connection refused"))] * 3)
    await rig.start()
    job, client = rig.submit(sync=True, max_attempts=3)

    assert await client.whole() == [Aborted(AbortReason.TARGET_FAILED, "connection refused")]
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, failed.error) == (3, "connection refused")
    assert len(rig.target.requests) == 3


async def test_a_failure_mid_stream_ends_the_stream_with_the_error(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    rig.target.script(Reply([first], then_raise=TargetBrokeStream("connection reset")))
    await rig.start()
    job, client = rig.submit(sync=True)

    assert await client.whole() == [
        Begun(200, NDJSON),
        first,
        Aborted(AbortReason.TARGET_FAILED, "connection reset"),
    ]
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, failed.error) == (1, "connection reset")


async def test_a_retryable_failure_mid_stream_is_not_retried(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    rig.target.script(Reply([first], then_raise=TargetUnreachable("read timed out")))
    await rig.start()
    job, client = rig.submit(sync=True)

    assert await client.whole() == [
        Begun(200, NDJSON),
        first,
        Aborted(AbortReason.TARGET_FAILED, "read timed out"),
    ]
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, len(rig.target.requests)) == (1, 1)


async def test_an_unexpected_exception_fails_the_job_and_the_loop_goes_on(rig: Rig) -> None:
    rig.target.script(
        Refuse(RuntimeError("boom")),
        Reply([b"{}\n"], then_raise=ValueError("bad chunk")),
        Reply([b"not json"], content_type=JSON),
    )
    await rig.start()
    crashed, crashed_client = rig.submit(sync=True)
    midway, midway_client = rig.submit(sync=True)
    garbled, _ = rig.submit()
    fine, _ = rig.submit()

    assert await crashed_client.whole() == [Aborted(AbortReason.FAULT, "boom")]
    assert (await rig.settled(crashed.id, JobState.FAILED)).error == "boom"
    assert await midway_client.whole() == [
        Begun(200, NDJSON),
        b"{}\n",
        Aborted(AbortReason.FAULT, "bad chunk"),
    ]
    assert (await rig.settled(midway.id, JobState.FAILED)).error == "bad chunk"
    assert (await rig.settled(garbled.id, JobState.FAILED)).result is None
    assert (await rig.settled(fine.id, JobState.DONE)).attempts == 1


# -- a running job cancelled -------------------------------------------------------------


async def test_cancelling_a_running_job_aborts_its_request(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    reply = Reply([first, DONE_LINE], pause_before=1)
    rig.target.script(reply)
    worker = await rig.start()
    job, client = rig.submit(sync=True)
    assert await client.upto(2) == [Begun(200, NDJSON), first]

    cancelled = await worker.cancel(job.id)

    assert cancelled.state == JobState.CANCELLED
    assert rig.target.requests[0].exited_with is asyncio.CancelledError
    assert await client.whole() == [
        Begun(200, NDJSON),
        first,
        Aborted(AbortReason.CANCELLED, "job cancelled"),
    ]
    assert (await rig.settled(job.id, JobState.CANCELLED)).state == JobState.CANCELLED
    with pytest.raises(InvalidTransition):
        await worker.cancel(job.id)
    with pytest.raises(JobNotFound):
        await worker.cancel("01JNOSUCHJOB0000000000000")

    after, _ = rig.submit()
    await rig.settled(after.id, JobState.DONE)
    assert rig.store.get(job.id).state == JobState.CANCELLED  # never overwritten
    assert rig.target.max_in_flight == 1


async def test_a_job_cancelled_behind_the_workers_back_is_not_overwritten(rig: Rig) -> None:
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    await rig.start()
    job, _ = rig.submit()
    await eventually(reply.paused.is_set, "the request")
    running = rig.store.get(job.id)
    rig.store.save(cancel_job(running, rig.clock.now()), expected=running.state)

    reply.resume.set()
    await eventually(lambda: rig.target.requests[0].exited_with is None, "the answer")
    after, _ = rig.submit()
    await rig.settled(after.id, JobState.DONE)
    assert rig.store.get(job.id).state == JobState.CANCELLED


async def test_cancelling_a_loading_job_aborts_the_load(rig: Rig) -> None:
    load = Reply([LOADED], content_type=JSON, pause_before=0)
    rig.target.script_loads(load)
    worker = await rig.start()
    job, _ = rig.submit()
    await eventually(load.paused.is_set, "the load request")

    await worker.cancel(job.id)

    assert rig.target.loads[0].exited_with is asyncio.CancelledError
    assert (await rig.settled(job.id, JobState.CANCELLED)).state == JobState.CANCELLED
    assert rig.target.requests == []
