"""The webhook dispatcher on the in-memory outbox, a fake receiver and a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foreman_core import job as jobs
from foreman_core.artifacts import artifact_views
from foreman_core.clock import UlidGenerator
from foreman_core.job import CHAT, Artifact, Job, JobState, StateChange
from foreman_core.lull import WorkerLull
from foreman_core.memory_store import InMemoryJobStore
from foreman_core.ports import DeliveryResult
from foreman_core.webhooks import WebhookDispatcher, event_body

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "llama3.2:latest"
PUBLIC_URL = "http://foreman.test"
OK = DeliveryResult(ok=True, status=204)
REFUSED = DeliveryResult(ok=False, error="could not reach receiver: connection refused")
WAIT = 5.0
"""Seconds a test waits for the dispatcher before it fails (never reached when all is well)."""


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: datetime = START) -> None:
        self.current = now

    def now(self) -> datetime:
        """The fake now."""
        return self.current

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.current += timedelta(seconds=seconds)


@dataclass
class Received:
    """One request the fake receiver got."""

    url: str
    event_id: str
    event: dict[str, Any]
    answered: DeliveryResult


@dataclass
class FakeReceiver:
    """A WebhookSender that records every request and answers from a script per URL.

    A URL with no scripted answer left is acknowledged; a URL with a closed gate hangs until
    the test opens it.
    """

    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[DeliveryResult | Exception]] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    hanging: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, url: str, *answers: DeliveryResult | Exception) -> None:
        """Answer the next requests to `url` with these results (an exception is raised)."""
        self.scripts.setdefault(url, []).extend(answers)

    def close_gate(self, url: str) -> asyncio.Event:
        """Make requests to `url` hang until the returned event is set."""
        return self.gates.setdefault(url, asyncio.Event())

    async def send(self, url: str, event_id: str, body: bytes) -> DeliveryResult:
        """Record the request, then answer as scripted."""
        gate = self.gates.get(url)
        if gate is not None and not gate.is_set():
            self.hanging += 1
            self._notify()
            await gate.wait()
            self.hanging -= 1
        script = self.scripts.get(url) or []
        answer = script.pop(0) if script else OK
        result = REFUSED if isinstance(answer, Exception) else answer
        self.received.append(Received(url, event_id, json.loads(body), result))
        self._notify()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def to(self, url: str) -> list[Received]:
        """The requests sent to one URL, in order."""
        return [r for r in self.received if r.url == url]

    def _notify(self) -> None:
        self._changed.set()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until a request arrives that makes `condition` true."""
        async with asyncio.timeout(WAIT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll a condition on the store until it holds (the dispatcher records after sending)."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


class World:
    """A store, a clock, a receiver and a dispatcher over them."""

    def __init__(self, **dispatcher_options: Any) -> None:
        self.ids = UlidGenerator()
        self.clock = FakeClock()
        self.store = InMemoryJobStore(self.ids)
        self.receiver = FakeReceiver()
        self.dispatcher = WebhookDispatcher(
            self.store,
            self.store,
            self.receiver,
            self.clock,
            PUBLIC_URL,
            **dispatcher_options,
        )

    def submit(self, url: str | None = "http://hooks.test/a", model: str = MODEL) -> Job:
        """Store a queued async job that wants webhooks at `url`."""
        job = jobs.new_job(
            job_id=self.ids.new_id(),
            kind=CHAT,
            model=model,
            payload=json.dumps({"model": model, "messages": []}).encode(),
            now=self.clock.now(),
            webhook_url=url,
        )
        return self.store.add(job)

    def start(self, job: Job) -> Job:
        """Dispatch the job to a resident model: queued → working."""
        working = jobs.claim(job, self.clock.now(), resident=True)
        return self.store.save(working, expected=JobState.QUEUED)

    def finish(self, job: Job, result: dict[str, Any], artifacts: list[Artifact]) -> Job:
        """working → done with a result and artifacts."""
        done = jobs.complete(job, self.clock.now(), json.dumps(result).encode())
        return self.store.save(done, expected=JobState.WORKING, artifacts=artifacts)

    def next_delivery_in(self) -> float | None:
        """Seconds from the fake now to the outbox's next due event."""
        next_at = self.store.next_delivery_at()
        return None if next_at is None else (next_at - self.clock.now()).total_seconds()

    async def fail_then_advance(self, seconds: float) -> None:
        """Wait for the failed attempt to be rescheduled `seconds` ahead, then get there."""
        await eventually(lambda: self.next_delivery_in() == seconds)
        self.clock.advance(seconds)
        self.dispatcher.wake()


async def let_the_dispatcher_run() -> None:
    """Yield to the event loop a few times, so a woken dispatcher acts on what it sees."""
    for _ in range(20):
        await asyncio.sleep(0)


@asynccontextmanager
async def running(world: World) -> AsyncIterator[World]:
    """The world's dispatcher running as its own task, stopped on exit."""
    task = asyncio.create_task(world.dispatcher.run())
    try:
        yield world
    finally:
        await world.dispatcher.stop()
        await asyncio.wait_for(task, WAIT)


async def test_a_job_lifecycle_is_delivered_in_order() -> None:
    world = World()
    async with running(world):
        job = world.submit()
        world.dispatcher.wake()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        world.clock.advance(1)
        job = world.start(job)
        world.dispatcher.wake()
        world.clock.advance(1)
        world.finish(
            job, {"message": {"content": "hi"}}, [Artifact("completion", "text/plain", b"hi")]
        )
        world.dispatcher.wake()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 3)

    events = [r.event for r in world.receiver.received]
    assert [(e["previous_state"], e["state"]) for e in events] == [
        (None, "queued"),
        ("queued", "working"),
        ("working", "done"),
    ]
    assert [e["attempts"] for e in events] == [0, 1, 1]
    assert [e["timestamp"] for e in events] == [
        "2026-01-01T00:00:00.000000Z",
        "2026-01-01T00:00:01.000000Z",
        "2026-01-01T00:00:02.000000Z",
    ]
    assert all(e["type"] == "job.state_changed" and e["job_id"] == job.id for e in events)
    assert all(e["model"] == MODEL for e in events)
    assert len({e["event_id"] for e in events}) == 3
    assert [r.event_id for r in world.receiver.received] == [e["event_id"] for e in events]
    assert world.store.next_delivery_at() is None


async def test_an_event_recorded_without_a_wake_is_found_by_polling() -> None:
    world = World(poll_interval=0.01)
    async with running(world):
        await let_the_dispatcher_run()
        world.submit()  # nobody calls wake()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)


async def test_events_recorded_before_start_are_delivered_in_order() -> None:
    world = World()
    job = world.start(world.submit())
    world.finish(job, {"done": True}, [])

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 3)

    assert [r.event["state"] for r in world.receiver.received] == ["queued", "working", "done"]


async def test_the_done_event_carries_the_result_and_the_artifacts() -> None:
    world = World()
    big = Artifact("thinking", "text/plain; charset=utf-8", b"x" * 262_145)
    artifacts = [Artifact("completion", "text/plain; charset=utf-8", "héllo".encode()), big]
    job = world.start(world.submit())
    job = world.finish(job, {"message": {"role": "assistant", "content": "héllo"}}, artifacts)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 3)

    queued, working, done = (r.event for r in world.receiver.received)
    assert queued["result"] is None and queued["artifacts"] is None
    assert working["result"] is None and working["artifacts"] is None
    assert done["result"] == {"message": {"role": "assistant", "content": "héllo"}}
    assert done["artifacts"] == [
        {
            "name": "completion",
            "content_type": "text/plain; charset=utf-8",
            "size": 6,
            "data": "héllo",
        },
        {
            "name": "thinking",
            "content_type": "text/plain; charset=utf-8",
            "size": 262_145,
            "url": f"{PUBLIC_URL}/jobs/{job.id}/artifacts/thinking",
        },
    ]
    assert done["error"] is None


async def test_a_failed_event_carries_the_error() -> None:
    world = World()
    job = world.start(world.submit())
    world.store.save(jobs.fail(job, world.clock.now(), "target answered 400"), expected=job.state)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 3)

    failed = world.receiver.received[-1].event
    assert (failed["state"], failed["error"]) == ("failed", "target answered 400")
    assert failed["result"] is None and failed["artifacts"] is None


async def test_a_receiver_failing_twice_gets_the_same_event_after_1_then_2_seconds() -> None:
    world = World()
    url = "http://hooks.test/flaky"
    world.receiver.script(url, REFUSED, DeliveryResult(ok=False, status=500))
    job = world.submit(url)
    world.start(job)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        await world.fail_then_advance(1)
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 2)
        await world.fail_then_advance(2)
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 4)

    first, second, third, after = world.receiver.received
    assert first.event_id == second.event_id == third.event_id
    assert first.event == second.event == third.event
    assert [first.answered.ok, second.answered.ok, third.answered.ok] == [False, False, True]
    assert after.event["state"] == "working"
    assert after.event_id != first.event_id


async def test_a_retry_is_not_sent_before_its_time() -> None:
    world = World()
    url = "http://hooks.test/flaky"
    world.receiver.script(url, REFUSED)
    world.submit(url)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        await eventually(lambda: world.next_delivery_in() == 1)
        world.clock.advance(0.5)
        world.dispatcher.wake()
        await let_the_dispatcher_run()
        assert len(world.receiver.received) == 1  # woken before the event is due: nothing sent
        world.clock.advance(0.5)
        world.dispatcher.wake()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 2)


async def test_an_event_is_abandoned_after_the_backoff_schedule_runs_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    url = "http://hooks.test/down"
    world.receiver.script(url, *[REFUSED] * 6)
    job = world.submit(url)

    with caplog.at_level(logging.WARNING, logger="foreman.webhooks"):
        async with running(world):
            for count, delay in enumerate([1, 2, 4, 8, 16], start=1):
                await world.receiver.wait_until(lambda n=count: len(world.receiver.received) == n)
                await world.fail_then_advance(delay)
            await world.receiver.wait_until(lambda: len(world.receiver.received) == 6)
            await eventually(lambda: world.store.next_delivery_at() is None)
            assert world.store.due_deliveries(world.clock.now() + timedelta(days=1)) == []

            # Abandoning one event does not hold back the job's later ones.
            world.start(job)
            world.dispatcher.wake()
            await world.receiver.wait_until(lambda: len(world.receiver.received) == 7)

    assert world.dispatcher.max_attempts == 6
    assert {r.event_id for r in world.receiver.received[:6]} == {
        world.receiver.received[0].event_id
    }
    assert world.receiver.received[6].event["state"] == "working"
    assert any("abandoned after 6 attempts" in r.getMessage() for r in caplog.records)


async def test_a_failing_receiver_never_changes_the_job() -> None:
    world = World(schedule=(1,))
    url = "http://hooks.test/down"
    world.receiver.script(url, REFUSED, DeliveryResult(ok=False, status=503, retry_after=1))
    job = world.submit(url)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        await world.fail_then_advance(1)
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 2)
        await eventually(lambda: world.store.next_delivery_at() is None)

    assert world.store.get(job.id) == job
    assert world.store.list_artifacts(job.id) == []
    assert world.store.count_queued() == 1


@pytest.mark.parametrize(
    ("retry_after", "expected_delay"),
    [(30.0, 30.0), (0.5, 1.0), (None, 1.0), (10.0**6, 3600.0)],
)
async def test_retry_after_is_honoured_when_longer_than_the_schedule(
    retry_after: float | None, expected_delay: float
) -> None:
    world = World()
    url = "http://hooks.test/busy"
    world.receiver.script(url, DeliveryResult(ok=False, status=429, retry_after=retry_after))
    world.submit(url)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        await world.fail_then_advance(expected_delay)
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 2)

    assert world.receiver.received[1].answered.ok


async def test_a_hanging_receiver_does_not_hold_back_other_jobs() -> None:
    world = World()
    slow_url, fast_url = "http://hooks.test/slow", "http://hooks.test/fast"
    gate = world.receiver.close_gate(slow_url)
    slow = world.start(world.submit(slow_url))
    fast = world.start(world.submit(fast_url))

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.to(fast_url)) == 2)
        assert world.receiver.hanging == 1
        assert world.receiver.to(slow_url) == []  # its second event waits behind the first

        gate.set()
        await world.receiver.wait_until(lambda: len(world.receiver.to(slow_url)) == 2)

    assert [r.event["job_id"] for r in world.receiver.to(fast_url)] == [fast.id, fast.id]
    assert [r.event["state"] for r in world.receiver.to(slow_url)] == ["queued", "working"]
    assert {r.event["job_id"] for r in world.receiver.to(slow_url)} == {slow.id}


async def test_at_most_concurrency_deliveries_are_in_flight() -> None:
    world = World(concurrency=2)
    gates = [world.receiver.close_gate(f"http://hooks.test/{n}") for n in range(3)]
    for n in range(3):
        world.submit(f"http://hooks.test/{n}")

    async with running(world):
        await world.receiver.wait_until(lambda: world.receiver.hanging == 2)
        world.dispatcher.wake()
        await let_the_dispatcher_run()
        assert world.receiver.hanging == 2

        gates[0].set()
        await world.receiver.wait_until(
            lambda: len(world.receiver.received) == 1 and world.receiver.hanging == 2
        )
        for gate in gates:
            gate.set()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 3)

    assert [r.url for r in world.receiver.received] == [f"http://hooks.test/{n}" for n in range(3)]


async def test_a_sender_that_raises_counts_as_a_failed_attempt() -> None:
    world = World()
    url = "http://hooks.test/buggy"
    world.receiver.script(url, RuntimeError("boom"))
    world.submit(url)

    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
        await world.fail_then_advance(1)
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 2)

    first, second = world.receiver.received
    assert first.event_id == second.event_id


async def test_stop_returns_while_a_delivery_hangs_and_the_event_stays_pending() -> None:
    world = World()
    url = "http://hooks.test/slow"
    world.receiver.close_gate(url)
    world.submit(url)

    async with running(world):
        await world.receiver.wait_until(lambda: world.receiver.hanging == 1)

    assert world.receiver.received == []
    assert len(world.store.due_deliveries(world.clock.now())) == 1


async def test_stop_before_run_returns_at_once() -> None:
    await World().dispatcher.stop()


# -- the worker's lull -----------------------------------------------------------------------


class WatchedLull(WorkerLull):
    """A lull that tells when somebody starts waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        self.awaited.set()
        return await super().wait(timeout)


async def test_deliveries_wait_for_the_lull() -> None:
    lull = WatchedLull()
    world = World(lull=lull, max_hold=3600)
    world.submit()
    async with running(world):
        await lull.awaited.wait()
        await let_the_dispatcher_run()
        assert world.receiver.received == []  # the worker is busy: nothing is sent

        lull.idle()
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)


async def test_a_worker_that_stays_busy_holds_deliveries_back_only_for_max_hold() -> None:
    lull = WorkerLull()
    lull.busy()
    world = World(lull=lull, max_hold=0.01)
    world.submit()
    async with running(world):
        await world.receiver.wait_until(lambda: len(world.receiver.received) == 1)
    assert not lull.is_open


def _change(state: JobState, previous: JobState | None, error: str | None = None) -> StateChange:
    return StateChange(
        event_id="01JEVENT000000000000000000",
        job_id="01JJOB00000000000000000000",
        model=MODEL,
        url="http://hooks.test/a",
        state=state,
        previous_state=previous,
        attempts=1,
        timestamp=datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC),
        error=error,
    )


def test_an_event_has_exactly_the_documented_fields_in_order() -> None:
    body = event_body(_change(JobState.WORKING, JobState.QUEUED), None, None)

    assert json.loads(body) == {
        "type": "job.state_changed",
        "event_id": "01JEVENT000000000000000000",
        "job_id": "01JJOB00000000000000000000",
        "model": MODEL,
        "state": "working",
        "previous_state": "queued",
        "attempts": 1,
        "timestamp": "2026-03-04T05:06:07.000890Z",
        "error": None,
        "result": None,
        "artifacts": None,
    }
    assert list(json.loads(body)) == [
        "type",
        "event_id",
        "job_id",
        "model",
        "state",
        "previous_state",
        "attempts",
        "timestamp",
        "error",
        "result",
        "artifacts",
    ]


def test_a_done_event_of_a_pruned_job_has_null_result_and_artifacts() -> None:
    event = json.loads(event_body(_change(JobState.DONE, JobState.WORKING), None, None))

    assert (event["state"], event["result"], event["artifacts"]) == ("done", None, None)


def test_artifact_views_inline_text_and_base64_binary_up_to_256_kib() -> None:
    artifacts = [
        Artifact("completion", "text/plain; charset=utf-8", b"hello"),
        Artifact("image", "image/png", b"\x89PNG\x00"),
        Artifact("limit", "application/octet-stream", b"\x00" * 262_144),
        Artifact("notes", "text/plain", b"\xff\xfe"),
    ]

    views = artifact_views("JOB", artifacts, "http://foreman.test/")

    assert views[0] == {
        "name": "completion",
        "content_type": "text/plain; charset=utf-8",
        "size": 5,
        "data": "hello",
    }
    assert views[1] == {
        "name": "image",
        "content_type": "image/png",
        "size": 5,
        "data": "iVBORwA=",
        "encoding": "base64",
    }
    assert views[2]["size"] == 262_144 and "data" in views[2] and "url" not in views[2]
    assert views[3]["encoding"] == "base64"  # labelled text, but not UTF-8


def test_artifact_views_link_artifacts_over_256_kib() -> None:
    views = artifact_views(
        "JOB", [Artifact("completion", "text/plain", b"a" * 262_145)], "http://foreman.test/"
    )

    assert views == [
        {
            "name": "completion",
            "content_type": "text/plain",
            "size": 262_145,
            "url": "http://foreman.test/jobs/JOB/artifacts/completion",
        }
    ]


def test_the_dispatcher_renders_a_done_event_of_a_pruned_job_with_nulls() -> None:
    world = World()

    event = json.loads(world.dispatcher.render(_change(JobState.DONE, JobState.WORKING)))

    assert (event["state"], event["result"], event["artifacts"]) == ("done", None, None)
