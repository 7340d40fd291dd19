"""Random workloads against each job store, checked step by step against a model in a dict."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from foreman_adapters.sqlite import SqliteJobStore
from foreman_core import job as jobs
from foreman_core.errors import IdempotencyConflict, StaleJob
from foreman_core.job import (
    ALLOWED_TRANSITIONS,
    CHAT,
    RUNNING_STATES,
    Artifact,
    Job,
    JobState,
    new_job,
    state_change,
)
from foreman_core.memory_store import InMemoryJobStore
from foreman_core.scheduler import choose_next

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
FAR_FUTURE = T0 + timedelta(days=3650)
RESIDENCIES = ["a:latest", "b:latest", "c:latest", "a:latest|num_ctx=4096"]


SUBMISSIONS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # model
        st.sampled_from([None, {"num_ctx": 4096}]),  # options
        st.sampled_from([0, 10]),  # priority
        st.booleans(),  # sync
        st.booleans(),  # with a webhook
        st.sampled_from([None, "k1", "k2"]),  # idempotency key
        st.integers(1, 3),  # max attempts
    ),
    min_size=1,
    max_size=6,
)


class CountingIds:
    """Ids that sort in the order they were made: 26 digits, valid Crockford base32."""

    def __init__(self) -> None:
        self.count = 0

    def new_id(self) -> str:
        """The next id."""
        self.count += 1
        return f"{self.count:026d}"


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        """The fake now."""
        return self.current

    def advance(self, by: timedelta) -> None:
        """Move time forward."""
        self.current += by


class StoreMachine(RuleBasedStateMachine):
    """Drives one store; `self.jobs` is what the store must hold."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.ids = CountingIds()
        self.clock = FakeClock(T0)
        self.directory = tempfile.TemporaryDirectory()
        self.store = self.open_store()
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, str] = {}
        self.events: dict[str, list[tuple[JobState | None, JobState]]] = {}
        self.delivered: dict[str, int] = {}

    def open_store(self) -> InMemoryJobStore | SqliteJobStore:
        """A store of this machine's kind, on the same file every time."""
        if self.kind == "memory":
            return InMemoryJobStore(self.ids)
        return SqliteJobStore(Path(self.directory.name) / "foreman.db", self.ids)

    def teardown(self) -> None:
        """Close the store and remove its file."""
        self.store.close()
        self.directory.cleanup()

    # -- bookkeeping ---------------------------------------------------------------------

    def running(self) -> Job | None:
        """The model's claimed job, if any."""
        return next((j for j in self.jobs.values() if j.state in RUNNING_STATES), None)

    def unfinished(self) -> list[str]:
        """Ids of jobs that can still move."""
        return sorted(i for i, j in self.jobs.items() if not j.state.finished)

    def moved(self, before: Job, after: Job) -> None:
        """Record a transition the store made or accepted, checking it is a legal one."""
        assert after.state in ALLOWED_TRANSITIONS[before.state], (before.state, after.state)
        assert after.attempts >= before.attempts
        self.jobs[after.id] = after
        if state_change(before, after, "-") is not None:
            self.events[after.id].append((before.state, after.state))

    def save(self, job: Job, artifacts: list[Artifact] | None = None) -> None:
        """Save a transition of the job in the model through the store."""
        before = self.jobs[job.id]
        saved = self.store.save(job, expected=before.state, artifacts=artifacts or [])
        assert saved == job
        self.moved(before, job)

    # -- rules ---------------------------------------------------------------------------

    @initialize(submissions=SUBMISSIONS.filter(lambda s: len(s) > 2))
    def seed_queue(self, submissions: list[tuple[Any, ...]]) -> None:
        """Start with a backlog, so that claims have choices to make."""
        for submission in submissions:
            self.submit_one(*submission)

    @rule(submissions=SUBMISSIONS)
    def submit(self, submissions: list[tuple[Any, ...]]) -> None:
        """Clients submit a few jobs at one instant."""
        for submission in submissions:
            self.submit_one(*submission)

    def submit_one(
        self,
        model: str,
        options: dict[str, Any] | None,
        priority: int,
        sync: bool,
        webhook: bool,
        key: str | None,
        max_attempts: int,
    ) -> None:
        """A client submits a job; a reused idempotency key gets the earlier one or a conflict."""
        job = new_job(
            job_id=self.ids.new_id(),
            kind=CHAT,
            model=model,
            payload=model.encode(),
            now=self.clock.now(),
            options=options,
            priority=priority,
            sync=sync,
            max_attempts=max_attempts,
            webhook_url="https://hooks.example/x" if webhook else None,
            idempotency_key=key,
        )
        if key is not None and key in self.keys:
            earlier = self.jobs[self.keys[key]]
            if earlier.fingerprint == job.fingerprint:
                assert self.store.add(job) == earlier
            else:
                try:
                    self.store.add(job)
                except IdempotencyConflict as conflict:
                    assert conflict.job_id == earlier.id
                else:
                    raise AssertionError("a reused key with another body was accepted")
            return
        assert self.store.add(job) == job
        self.jobs[job.id] = job
        self.events[job.id] = []
        self.delivered[job.id] = 0
        if state_change(None, job, "-") is not None:
            self.events[job.id].append((None, JobState.QUEUED))
        if key is not None:
            self.keys[key] = job.id

    @precondition(lambda self: self.running() is None)
    @rule(
        resident=st.lists(st.sampled_from(RESIDENCIES), max_size=3, unique=True),
        max_wait=st.sampled_from([timedelta(seconds=5), timedelta(seconds=60)]),
    )
    def claim(self, resident: list[str], max_wait: timedelta) -> None:
        """The worker claims the next job; it must be the scheduler's choice."""
        now = self.clock.now()
        expected = choose_next(self.jobs.values(), resident, now, max_wait)
        claimed = self.store.claim_next(resident=resident, now=now, max_wait=max_wait)
        if expected is None:
            assert claimed is None
            return
        assert claimed == jobs.claim(expected, now, resident=expected.residency in resident)
        self.moved(expected, claimed)

    @precondition(lambda self: self.running() is None)
    @rule(model=st.sampled_from(["a", "b"]), resident=st.booleans())
    def start_at_once(self, model: str, resident: bool) -> None:
        """A sync request finds nothing eligible queued: stored already claimed (ADR 0015)."""
        now = self.clock.now()
        if choose_next(self.jobs.values(), [], now, timedelta(seconds=60)) is not None:
            return
        job = new_job(
            job_id=self.ids.new_id(),
            kind=CHAT,
            model=model,
            payload=model.encode(),
            now=now,
            priority=10,
            sync=True,
        )
        claimed = jobs.claim(job, now, resident=resident)
        assert self.store.add_claimed(job, claimed) == claimed
        self.jobs[job.id] = job
        self.events[job.id] = []
        self.delivered[job.id] = 0
        self.moved(job, claimed)

    @precondition(
        lambda self: (r := self.running()) is not None and r.state == JobState.WORKING and r.sync
    )
    @rule()
    def complete_later(self) -> None:
        """A sync job's answer is in: recorded done without waiting; every read sees it."""
        job = self.running()
        assert job is not None
        done = jobs.complete(job, self.clock.now(), None)
        self.store.save_later(done, expected=JobState.WORKING)
        self.moved(job, done)

    @precondition(lambda self: (r := self.running()) is not None and r.state == JobState.LOADING)
    @rule()
    def mark_working(self) -> None:
        """The model has loaded."""
        job = self.running()
        assert job is not None
        self.save(jobs.mark_working(job, self.clock.now()))

    @precondition(lambda self: (r := self.running()) is not None and r.state == JobState.WORKING)
    @rule(text=st.binary(max_size=8))
    def complete(self, text: bytes) -> None:
        """The target answered."""
        job = self.running()
        assert job is not None
        done = jobs.complete(job, self.clock.now(), text)
        self.save(done, [Artifact("completion", "text/plain", text)])
        assert self.store.get_artifact(job.id, "completion").data == text

    @precondition(lambda self: self.running() is not None)
    @rule()
    def fail(self) -> None:
        """The target failed the job for good."""
        job = self.running()
        assert job is not None
        self.save(jobs.fail(job, self.clock.now(), "rejected"))

    @precondition(lambda self: self.running() is not None)
    @rule(backoff=st.integers(0, 20))
    def retry(self, backoff: int) -> None:
        """The target was busy: back to the queue after a backoff."""
        job = self.running()
        assert job is not None
        now = self.clock.now()
        self.save(jobs.requeue(job, now, not_before=now + timedelta(seconds=backoff), error="busy"))

    @precondition(lambda self: bool(self.unfinished()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """A client cancels a job that has not finished."""
        job = self.jobs[data.draw(st.sampled_from(self.unfinished()))]
        self.save(jobs.cancel(job, self.clock.now()))

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def stale_save(self, data: st.DataObject) -> None:
        """A write based on a state the job has left is refused and changes nothing."""
        job = self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))]
        wrong = data.draw(st.sampled_from([s for s in JobState if s != job.state]))
        try:
            self.store.save(job, expected=wrong)
        except StaleJob:
            pass
        else:
            raise AssertionError("a stale save was accepted")

    @rule()
    def crash_and_reopen(self) -> None:
        """foreman dies and starts again: running jobs are recovered."""
        if self.kind == "sqlite":
            self.store.close()
            self.store = self.open_store()
        now = self.clock.now()
        recovered = sorted(self.store.recover_interrupted(now), key=lambda j: j.id)
        running = self.running()
        if running is None:
            assert recovered == []
            return
        if running.sync or running.attempts >= running.max_attempts:
            expected = jobs.fail(running, now, self.store.INTERRUPTED)
        else:
            expected = jobs.requeue(running, now, not_before=now, error=self.store.INTERRUPTED)
        assert recovered == [expected]
        self.moved(running, expected)

    @rule(age=st.integers(0, 60))
    def prune(self, age: int) -> None:
        """Finished jobs older than `age` seconds are deleted."""
        before = self.clock.now() - timedelta(seconds=age)
        doomed = {
            i
            for i, j in self.jobs.items()
            if j.state.finished and j.finished_at is not None and j.finished_at < before
        }
        assert self.store.prune_finished(before) == len(doomed)
        for job_id in doomed:
            del self.jobs[job_id], self.events[job_id], self.delivered[job_id]
        self.keys = {k: i for k, i in self.keys.items() if i not in doomed}

    @rule()
    def deliver(self) -> None:
        """The dispatcher sends every due event; each job's come in the order recorded."""
        due = self.store.due_deliveries(FAR_FUTURE)
        assert len({d.event.job_id for d in due}) == len(due)
        for delivery in due:
            job_id = delivery.event.job_id
            expected = self.events[job_id][self.delivered[job_id]]
            assert (delivery.event.previous_state, delivery.event.state) == expected
            self.store.mark_delivered(delivery.event.event_id, self.clock.now())
            self.delivered[job_id] += 1

    @rule(seconds=st.integers(0, 30), micros=st.integers(0, 999_999))
    def advance_clock(self, seconds: int, micros: int) -> None:
        """Time passes."""
        self.clock.advance(timedelta(seconds=seconds, microseconds=micros))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def store_holds_exactly_the_model(self) -> None:
        """No job lost, none invented, each exactly as the model says."""
        listed = self.store.list(limit=10_000).jobs
        assert [j.id for j in listed] == sorted(self.jobs, reverse=True)
        for job in listed:
            assert job == self.jobs[job.id]
        queued = sum(1 for j in self.jobs.values() if j.state == JobState.QUEUED)
        assert self.store.count_queued() == queued

    @invariant()
    def at_most_one_job_runs(self) -> None:
        """The single worker never holds two jobs."""
        running = self.store.summary().running
        assert len(running) <= 1
        assert running == ([] if self.running() is None else [self.running()])

    @invariant()
    def undelivered_events_are_pending(self) -> None:
        """Every recorded but undelivered event is still in the outbox."""
        waiting = {i for i, events in self.events.items() if len(events) > self.delivered[i]}
        due = {d.event.job_id for d in self.store.due_deliveries(FAR_FUTURE, limit=10_000)}
        assert due == waiting


MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=50, deadline=None)


class InMemoryStoreMachine(StoreMachine):
    """The state machine over InMemoryJobStore."""

    kind = "memory"


class SqliteStoreMachine(StoreMachine):
    """The state machine over SqliteJobStore, reopening the file on a crash."""

    kind = "sqlite"


TestInMemoryStoreMachine = InMemoryStoreMachine.TestCase
TestInMemoryStoreMachine.settings = MACHINE_SETTINGS
TestSqliteStoreMachine = pytest.mark.slow(SqliteStoreMachine.TestCase)
TestSqliteStoreMachine.settings = MACHINE_SETTINGS
