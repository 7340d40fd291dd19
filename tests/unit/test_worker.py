"""The worker on the in-memory store, driven by a scripted fake target, inventory and clock."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foreman_core import (
    InMemoryJobStore,
    InvalidTransition,
    Job,
    JobNotFound,
    JobState,
    QueueFull,
    RetryPolicy,
    TargetBrokeStream,
    TargetBusy,
    TargetRejected,
    TargetUnreachable,
    UlidGenerator,
    new_job,
)
from foreman_core.job import cancel as cancel_job
from foreman_core.lull import WorkerLull
from foreman_core.payloads import load_body
from foreman_core.worker import (
    JSON,
    STOPPED_MESSAGE,
    LiveResponse,
    ResponseFailed,
    ResponseStarted,
    Worker,
)

pytestmark = pytest.mark.anyio

NDJSON = "application/x-ndjson"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DONE_LINE = b'{"model":"m","message":{"role":"assistant","content":""},"done":true}\n'
LOADED = b'{"model":"m","message":{"role":"assistant","content":""},"done_reason":"load"}'


# -- fakes -------------------------------------------------------------------------------


@dataclass
class Reply:
    """The target answers 2xx with `chunks`; it may wait before chunk `pause_before` until
    `resume` is set, and may fail with `then_raise` after the last chunk."""

    chunks: list[bytes] = field(default_factory=lambda: [DONE_LINE])
    status: int = 200
    content_type: str = NDJSON
    pause_before: int | None = None
    then_raise: Exception | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Refuse:
    """Entering the request raises `error` (no byte came back, or the target said no)."""

    error: Exception


Outcome = Reply | Refuse
OPEN = "open"


@dataclass
class Call:
    """One request the fake target received, and how its context was left."""

    kind: str
    body: bytes
    is_load: bool
    exited_with: type[BaseException] | str | None = OPEN


class FakeResponse:
    """A 2xx response of the fake target."""

    def __init__(self, reply: Reply) -> None:
        self.status = reply.status
        self.content_type = reply.content_type
        self._reply = reply

    async def chunks(self) -> AsyncIterator[bytes]:
        """The scripted chunks, with the scripted pause and failure."""
        for index, chunk in enumerate(self._reply.chunks):
            if index == self._reply.pause_before:
                self._reply.paused.set()
                await self._reply.resume.wait()
            yield chunk
        if self._reply.then_raise is not None:
            raise self._reply.then_raise


class FakeExchange:
    """The context manager `FakeTarget.open` returns: one request in flight while entered."""

    def __init__(self, target: FakeTarget, call: Call, outcome: Outcome) -> None:
        self._target, self._call, self._outcome = target, call, outcome

    async def __aenter__(self) -> FakeResponse:
        self._target.calls.append(self._call)
        self._target.in_flight += 1
        self._target.max_in_flight = max(self._target.max_in_flight, self._target.in_flight)
        if isinstance(self._outcome, Refuse):
            self._leave(None)
            raise self._outcome.error
        return FakeResponse(self._outcome)

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._leave(exc_type)

    def _leave(self, exc_type: type[BaseException] | None) -> None:
        self._target.in_flight -= 1
        self._call.exited_with = exc_type


class FakeTarget:
    """An InferenceTarget answering each request with the next scripted outcome.

    Load requests (chat with `messages: []`) have their own script; unscripted requests get a
    plain done line, unscripted loads a load answer.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._replies: deque[Outcome] = deque()
        self._loads: deque[Outcome] = deque()

    def script(self, *outcomes: Outcome) -> None:
        """Answer the next requests with `outcomes`, in order."""
        self._replies.extend(outcomes)

    def script_loads(self, *outcomes: Outcome) -> None:
        """Answer the next load requests with `outcomes`, in order."""
        self._loads.extend(outcomes)

    @property
    def requests(self) -> list[Call]:
        """The calls that were not load requests."""
        return [call for call in self.calls if not call.is_load]

    @property
    def loads(self) -> list[Call]:
        """The load requests."""
        return [call for call in self.calls if call.is_load]

    def open(self, kind: str, body: bytes) -> FakeExchange:
        """Start a request (see InferenceTarget.open)."""
        is_load = json.loads(body).get("messages") == []
        if is_load:
            outcome = self._loads.popleft() if self._loads else Reply([LOADED], content_type=JSON)
        else:
            outcome = self._replies.popleft() if self._replies else Reply()
        return FakeExchange(self, Call(kind, body, is_load), outcome)


class FakeInventory:
    """A ModelInventory whose loaded models the test sets; a refresh finds the inventory
    degraded while the test says the target is down."""

    def __init__(self, loaded: Sequence[str] = ()) -> None:
        self.loaded = list(loaded)
        self.degraded = False
        self.target_down = False
        self.refreshes = 0

    def resident(self) -> list[str]:
        """The models set as loaded."""
        return list(self.loaded)

    async def has_model(self, name: str) -> bool:
        """Every model is installed."""
        return True

    async def refresh(self) -> None:
        """Poll the fake target."""
        self.refreshes += 1
        self.degraded = self.target_down


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        """The current fake time."""
        return self.current

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.current += timedelta(seconds=seconds)


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

    def submit(
        self,
        *,
        sync: bool = False,
        body: dict[str, Any] | None = None,
        kind: str = "chat",
        max_attempts: int = 3,
    ) -> tuple[Job, LiveResponse | None]:
        """Queue a job as a handler would (`enqueue`, or `enqueue_live` for a sync job)."""
        request = body or CHAT_BODY
        job = new_job(
            job_id=self.ids.new_id(),
            kind=kind,
            model=request["model"],
            payload=json.dumps(request).encode(),
            now=self.clock.now(),
            options=request.get("options"),
            sync=sync,
            max_attempts=max_attempts,
        )
        if self.worker is None:
            self.store.add(job)
            return job, None
        if sync:
            return job, self.worker.enqueue_live(job, max_queued=None)
        self.worker.enqueue(job, max_queued=None)
        return job, None

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
        """Stop the worker and its loop."""
        if self.worker is not None:
            await self.worker.stop(0)
        if self.loop is not None:
            await self.loop


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A rig, stopped at the end of the test."""
    built = Rig()
    yield built
    await built.close()


async def read_all(live: LiveResponse) -> list[bytes]:
    """Every chunk of a started response."""
    return [chunk async for chunk in live.chunks()]


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
    job, live = rig.submit(sync=True)
    assert live is not None

    assert await live.start() == ResponseStarted(200, NDJSON)
    body = live.chunks()
    assert await anext(body) == chunks[0]
    assert reply.paused.is_set()  # the first chunk came through while the target held the rest
    reply.resume.set()
    assert [chunk async for chunk in body] == chunks[1:]

    done = await rig.settled(job.id, JobState.DONE)
    assert (done.attempts, done.result) == (1, None)
    assert rig.store.list_artifacts(job.id) == []
    assert rig.target.requests[0].body == job.payload  # the client's bytes, unchanged


async def test_sync_job_without_a_watching_client_never_reaches_the_target(rig: Rig) -> None:
    await rig.start()
    job, _ = rig.submit()
    orphan = new_job(
        job_id=rig.ids.new_id(), kind="chat", model="m", payload=b"{}", now=T0, sync=True
    )
    rig.store.add(orphan)
    rig.worker.wake()
    assert (await rig.settled(orphan.id, JobState.CANCELLED)).state == JobState.CANCELLED
    await rig.settled(job.id, JobState.DONE)
    assert len(rig.target.requests) == 1


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
    await rig.start()
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
    assert rig.worker.resident == ["n:latest|num_ctx=8192", "m:latest"]

    again, _ = rig.submit(body=body)
    await rig.settled(again.id, JobState.DONE)
    assert len(rig.target.loads) == 1  # still resident: no second load


async def test_the_bare_name_of_a_model_loaded_with_other_options_is_not_resident(
    rig: Rig,
) -> None:
    rig.inventory.loaded = ["m:latest"]
    await rig.start()
    job, _ = rig.submit(body={**CHAT_BODY, "options": {"num_ctx": 4096, "temperature": 0}})
    await rig.settled(job.id, JobState.DONE)
    assert rig.worker.resident == ["m:latest|num_ctx=4096"]


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
    await rig.start(policy=RetryPolicy())
    job, _ = rig.submit()

    queued = await rig.settled(job.id, JobState.QUEUED, attempts=1)
    assert (queued.attempts, queued.not_before) == (1, T0 + timedelta(seconds=1))
    assert len(rig.target.requests) == 1
    rig.clock.advance(1)
    rig.worker.wake()
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 2


async def test_a_rejection_is_relayed_at_once_without_retry(rig: Rig) -> None:
    body = b'{"error":"invalid format"}'
    rig.target.script(Refuse(TargetRejected(400, body, "application/json; charset=utf-8")))
    await rig.start()
    job, live = rig.submit(sync=True)

    assert await live.start() == ResponseFailed(400, body, "application/json; charset=utf-8")
    assert await read_all(live) == []
    failed = await rig.settled(job.id, JobState.FAILED)
    assert failed.attempts == 1
    assert len(rig.target.requests) == 1


async def test_retries_that_run_out_answer_502(rig: Rig) -> None:
    rig.target.script(*[Refuse(TargetUnreachable("connection refused"))] * 3)
    await rig.start()
    job, live = rig.submit(sync=True, max_attempts=3)

    assert await live.start() == ResponseFailed(502, b'{"error":"connection refused"}', JSON)
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, failed.error) == (3, "connection refused")
    assert len(rig.target.requests) == 3


async def test_a_failure_mid_stream_ends_the_stream_with_an_error_line(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    rig.target.script(Reply([first], then_raise=TargetBrokeStream("connection reset")))
    await rig.start()
    job, live = rig.submit(sync=True)

    assert await live.start() == ResponseStarted(200, NDJSON)
    assert await read_all(live) == [first, b'{"error":"connection reset"}\n']
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, failed.error) == (1, "connection reset")


async def test_a_retryable_failure_mid_stream_is_not_retried(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    rig.target.script(Reply([first], then_raise=TargetUnreachable("read timed out")))
    await rig.start()
    job, live = rig.submit(sync=True)

    await live.start()
    assert await read_all(live) == [first, b'{"error":"read timed out"}\n']
    failed = await rig.settled(job.id, JobState.FAILED)
    assert (failed.attempts, len(rig.target.requests)) == (1, 1)


async def test_an_unexpected_exception_fails_the_job_and_the_loop_goes_on(rig: Rig) -> None:
    rig.target.script(
        Refuse(RuntimeError("boom")),
        Reply([b"{}\n"], then_raise=ValueError("bad chunk")),
        Reply([b"not json"], content_type=JSON),
    )
    await rig.start()
    crashed, live_crashed = rig.submit(sync=True)
    midway, live_midway = rig.submit(sync=True)
    garbled, _ = rig.submit()
    fine, _ = rig.submit()

    assert await live_crashed.start() == ResponseFailed(500, b'{"error":"boom"}', JSON)
    assert (await rig.settled(crashed.id, JobState.FAILED)).error == "boom"
    assert await live_midway.start() == ResponseStarted(200, NDJSON)
    assert await read_all(live_midway) == [b"{}\n", b'{"error":"bad chunk"}\n']
    assert (await rig.settled(midway.id, JobState.FAILED)).error == "bad chunk"
    assert (await rig.settled(garbled.id, JobState.FAILED)).result is None
    assert (await rig.settled(fine.id, JobState.DONE)).attempts == 1


# -- cancel ------------------------------------------------------------------------------


async def test_a_cancelled_queued_job_never_reaches_the_target(rig: Rig) -> None:
    blocker = Reply(pause_before=0)
    rig.target.script(blocker)
    await rig.start()
    first, _ = rig.submit()
    await eventually(blocker.paused.is_set, "the first request")
    queued_async, _ = rig.submit(body={**CHAT_BODY, "messages": [{"role": "user", "content": "A"}]})
    queued_sync, live = rig.submit(sync=True)

    assert (await rig.worker.cancel(queued_async.id)).state == JobState.CANCELLED
    assert (await rig.worker.cancel(queued_sync.id)).state == JobState.CANCELLED
    assert await live.start() == ResponseFailed(409, b'{"error":"job cancelled"}', JSON)

    blocker.resume.set()
    await rig.settled(first.id, JobState.DONE)
    last, _ = rig.submit()
    await rig.settled(last.id, JobState.DONE)
    assert len(rig.target.requests) == 2  # first and last only
    assert rig.store.get(queued_async.id).state == JobState.CANCELLED


async def test_cancelling_a_running_job_aborts_its_request(rig: Rig) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    reply = Reply([first, DONE_LINE], pause_before=1)
    rig.target.script(reply)
    await rig.start()
    job, live = rig.submit(sync=True)
    await live.start()
    body = live.chunks()
    assert await anext(body) == first

    cancelled = await rig.worker.cancel(job.id)

    assert cancelled.state == JobState.CANCELLED
    assert rig.target.requests[0].exited_with is asyncio.CancelledError
    assert [chunk async for chunk in body] == [b'{"error":"job cancelled"}\n']
    assert (await rig.settled(job.id, JobState.CANCELLED)).state == JobState.CANCELLED
    with pytest.raises(InvalidTransition):
        await rig.worker.cancel(job.id)
    with pytest.raises(JobNotFound):
        await rig.worker.cancel("01JNOSUCHJOB0000000000000")

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
    await rig.start()
    job, _ = rig.submit()
    await eventually(load.paused.is_set, "the load request")

    await rig.worker.cancel(job.id)

    assert rig.target.loads[0].exited_with is asyncio.CancelledError
    assert (await rig.settled(job.id, JobState.CANCELLED)).state == JobState.CANCELLED
    assert rig.target.requests == []


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

    for job, live in submitted:
        if live is not None:
            await read_all(live)
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


# -- start and stop ----------------------------------------------------------------------


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
    running, running_live = rig.submit(sync=True)
    await eventually(reply.paused.is_set, "the request")
    waiting, waiting_live = rig.submit(sync=True)

    await worker.stop(0)

    assert await read_all(running_live) == [first, f'{{"error":"{STOPPED_MESSAGE}"}}\n'.encode()]
    assert rig.store.get(running.id).state == JobState.FAILED
    outcome = await waiting_live.start()
    assert isinstance(outcome, ResponseFailed) and outcome.status == 503
    assert rig.store.get(waiting.id).state == JobState.CANCELLED


# -- an unreachable target -------------------------------------------------------------------


async def test_queued_jobs_wait_while_the_target_is_unreachable_without_spending_attempts(
    rig: Rig,
) -> None:
    lull = WorkerLull()
    rig.inventory.degraded = True
    await rig.start(lull=lull)
    job, _ = rig.submit()
    assert await lull.wait(WAIT)  # the worker looked at the queue and went idle

    assert rig.target.calls == []
    assert (rig.store.get(job.id).state, rig.store.get(job.id).attempts) == (JobState.QUEUED, 0)

    rig.inventory.degraded = False
    rig.worker.wake()
    done = await rig.settled(job.id, JobState.DONE)
    assert done.attempts == 1


async def test_an_unreachable_target_is_polled_before_the_next_claim_and_holds_the_queue(
    rig: Rig,
) -> None:
    lull = WorkerLull()
    rig.inventory.target_down = True
    rig.target.script(Refuse(TargetUnreachable("connection refused")))
    await rig.start(lull=lull)  # RetryPolicy with no backoff: without the hold, retried at once
    first, _ = rig.submit()
    second, _ = rig.submit()
    await rig.settled(first.id, JobState.QUEUED, attempts=1)
    assert await lull.wait(WAIT)

    assert rig.inventory.refreshes == 1
    assert len(rig.target.requests) == 1
    assert rig.store.get(first.id).attempts == 1
    assert rig.store.get(second.id).attempts == 0

    rig.inventory.target_down = rig.inventory.degraded = False
    rig.worker.wake()
    assert (await rig.settled(first.id, JobState.DONE)).attempts == 2
    assert (await rig.settled(second.id, JobState.DONE)).attempts == 1


async def test_a_waiting_client_is_served_even_while_the_target_is_unreachable(rig: Rig) -> None:
    rig.inventory.degraded = True
    await rig.start()
    job, live = rig.submit(sync=True)
    assert live is not None

    assert await live.start() == ResponseStarted(200, NDJSON)
    assert await read_all(live) == [DONE_LINE]
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
    await rig.start(running_recheck=0.001)
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
    rig.worker.wake()
    assert (await rig.settled(job.id, JobState.DONE)).attempts == 2


async def test_a_slow_target_that_answers_polls_keeps_its_job_however_long_it_takes() -> None:
    rig = Rig()
    rig.inventory = WatchedInventory()
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    await rig.start(running_recheck=0.001)
    try:
        job, _ = rig.submit()
        await reply.paused.wait()
        rig.clock.advance(24 * 3600)
        looks = rig.inventory.looks
        await eventually(lambda: rig.inventory.looks >= looks + 3, "the worker to look again")

        reply.resume.set()
        assert (await rig.settled(job.id, JobState.DONE)).attempts == 1
    finally:
        await rig.close()


# -- a store that refuses writes ---------------------------------------------------------------


class RefusingStore(InMemoryJobStore):
    """Refuses every save while `refusing` is set, as a locked or full database would."""

    refusing = False

    def save(self, job: Job, **kwargs: Any) -> Job:
        if self.refusing:
            raise RuntimeError("database is locked")
        return super().save(job, **kwargs)


async def test_a_job_whose_end_the_store_refused_is_ended_as_a_crash_would_and_runs_again(
    rig: Rig,
) -> None:
    rig.store = store = RefusingStore(rig.ids)
    reply = Reply(pause_before=0)
    rig.target.script(reply)
    lull = WorkerLull()
    await rig.start(lull=lull)
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
    rig.worker.wake()
    redone = await rig.settled(first.id, JobState.DONE)
    assert redone.attempts == 2  # requeued as after a crash, then run again
    assert (await rig.settled(second.id, JobState.DONE)).attempts == 1


# -- a sync job that finds the worker resting (ADR 0015) ------------------------------------


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


OTHER_MODEL_BODY = {"model": "s", "messages": [{"role": "user", "content": "hi"}]}


def models_requested(rig: Rig) -> list[str]:
    """The model of each request (not load) the target received, in order."""
    return [json.loads(call.body)["model"] for call in rig.target.requests]


async def start_resting(rig: Rig) -> WorkerLull:
    """Start the rig's worker and wait until its loop rests; its lull."""
    lull = WorkerLull()
    await rig.start(lull=lull)
    assert await lull.wait(WAIT)
    return lull


async def runs_a_sync_job(rig: Rig) -> None:
    """A new sync job gets its answer and is done on its first attempt."""
    job, live = rig.submit(sync=True)
    assert live is not None
    await live.complete()
    assert (await rig.settled(job.id, JobState.DONE)).attempts == 1


@pytest.fixture
def recording(rig: Rig) -> RecordingStore:
    """The rig's store, recording."""
    rig.store = RecordingStore(rig.ids, rig.target)
    return rig.store


async def test_a_sync_job_that_finds_the_worker_resting_is_sent_before_it_is_stored(
    rig: Rig, recording: RecordingStore
) -> None:
    await start_resting(rig)  # its claim found nothing
    job, live = rig.submit(sync=True)
    assert live is not None

    answer, body = await live.complete()
    assert (answer, body) == (ResponseStarted(200, NDJSON), DONE_LINE)
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
    second, live = rig.submit(sync=True, body=OTHER_MODEL_BODY)
    assert live is not None

    await live.complete()
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

    job, live = rig.submit(sync=True, body=OTHER_MODEL_BODY)
    assert live is not None
    await live.complete()
    assert recording.writes[job.id][:2] == ["add", "claim_next"]
    assert (await rig.settled(retried.id, JobState.DONE)).attempts == 2
    assert models_requested(rig) == ["m", "m", "s"]  # the retry went first


async def test_a_sync_job_the_store_will_not_take_gets_an_error_and_its_request_aborted(
    rig: Rig, recording: RecordingStore
) -> None:
    rig.inventory.loaded = ["m"]  # no load: the request itself is in flight when refused
    rig.target.script(Reply(pause_before=0))
    lull = await start_resting(rig)
    recording.refuse_claimed = True
    job, live = rig.submit(sync=True)
    assert live is not None

    # The fake target answers its head at once, so the response has begun when the store
    # refuses the job; its body ends with the error.
    assert await live.start() == ResponseStarted(200, NDJSON)
    assert await read_all(live) == [b'{"error":"the job store would not record the job"}\n']
    assert rig.target.requests[0].exited_with is asyncio.CancelledError
    with pytest.raises(JobNotFound):
        rig.store.get(job.id)
    assert await lull.wait(WAIT)
    await runs_a_sync_job(rig)  # the worker goes on


async def test_a_sync_job_that_ends_before_the_store_had_it_is_refused_500_all_the_same(
    rig: Rig, recording: RecordingStore
) -> None:
    lull = await start_resting(rig)
    recording.refuse_claimed = True
    job, live = rig.submit(sync=True)  # the fake answers the load at once: first write
    assert live is not None

    assert await live.start() == ResponseFailed(
        500, b'{"error":"the job store would not record the job"}', JSON
    )
    with pytest.raises(JobNotFound):
        rig.store.get(job.id)
    assert await lull.wait(WAIT)
    await runs_a_sync_job(rig)  # nothing was left unrecorded to hold the worker


async def test_stop_fails_a_sync_job_that_was_started_at_once_and_releases_its_client(
    rig: Rig, recording: RecordingStore
) -> None:
    first = b'{"message":{"content":"Hel"},"done":false}\n'
    reply = Reply([first, DONE_LINE], pause_before=1)
    rig.target.script(reply)
    await start_resting(rig)
    running, running_live = rig.submit(sync=True)
    assert running_live is not None
    await eventually(reply.paused.is_set, "the request")
    assert recording.writes[running.id] == ["add_claimed"]

    assert rig.worker is not None
    await rig.worker.stop(0)

    assert await read_all(running_live) == [first, f'{{"error":"{STOPPED_MESSAGE}"}}\n'.encode()]
    assert rig.store.get(running.id).state == JobState.FAILED


# -- the lull ------------------------------------------------------------------------------


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


async def test_a_full_queue_refuses_with_an_estimate_and_leaves_no_live_response() -> None:
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
        worker.enqueue_live(refused, max_queued=1)

    assert full.value.retry_after is not None and full.value.retry_after >= 1
    assert refused.id not in worker._live
    with pytest.raises(JobNotFound):
        rig.store.get(refused.id)
