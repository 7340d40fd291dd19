"""The JobStore and WebhookOutbox contract, run against InMemoryJobStore and SqliteJobStore."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman_adapters.sqlite import SqliteJobStore
from foreman_adapters.sqlite.queue import CLAIM_QUERIES
from foreman_adapters.sqlite.schema import SCHEMA_VERSION
from foreman_core import job as jobs
from foreman_core.errors import (
    ArtifactNotFound,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    StaleJob,
)
from foreman_core.job import CHAT, Artifact, Job, JobState, new_job
from foreman_core.memory_store import InMemoryJobStore
from foreman_core.ports import QueuedGroup
from foreman_core.scheduler import choose_next, queue_order

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MAX_WAIT = timedelta(minutes=10)
HOOK = "https://hooks.example/foreman"

Store = InMemoryJobStore | SqliteJobStore
KINDS = ["memory", "sqlite"]


class CountingIds:
    """Ids that sort in the order they were made: 26 digits, valid Crockford base32."""

    def __init__(self) -> None:
        self.count = 0

    def new_id(self) -> str:
        """The next id."""
        self.count += 1
        return f"{self.count:026d}"


def open_store(kind: str, directory: Path, ids: CountingIds) -> Store:
    """A fresh store of the given kind (a SQLite file in `directory`)."""
    if kind == "memory":
        return InMemoryJobStore(ids)
    return SqliteJobStore(directory / "foreman.db", ids)


@pytest.fixture
def ids() -> CountingIds:
    """The id generator shared by the test and its store."""
    return CountingIds()


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, ids: CountingIds) -> Iterator[Store]:
    """Each store implementation, fresh."""
    opened = open_store(request.param, tmp_path, ids)
    yield opened
    opened.close()


@pytest.fixture
def make(ids: CountingIds) -> Callable[..., Job]:
    """Builds queued jobs with fresh ids (not stored)."""

    def build(
        model: str = "llama3.2",
        *,
        at: datetime = T0,
        options: dict[str, object] | None = None,
        **fields: object,
    ) -> Job:
        return new_job(
            job_id=ids.new_id(),
            kind=CHAT,
            model=model,
            payload=b'{"model":"' + model.encode() + b'","messages":[]}',
            now=at,
            options=options,
            **fields,  # type: ignore[arg-type]
        )

    return build


def claim(store: Store, resident: list[str] | None = None, now: datetime = T0) -> Job | None:
    """claim_next with the defaults of these tests."""
    return store.claim_next(resident=resident or [], now=now, max_wait=MAX_WAIT)


def run_to_done(store: Store, job: Job, now: datetime, result: bytes = b"ok") -> Job:
    """Claim `job` (which must be next) and complete it at `now`."""
    claimed = claim(store, [job.residency], now)
    assert claimed is not None and claimed.id == job.id
    return store.save(jobs.complete(claimed, now, result), expected=JobState.WORKING)


# -- add and get ----------------------------------------------------------------------------


def test_add_returns_the_job_and_get_gives_it_back_exactly(
    store: Store, make: Callable[..., Job]
) -> None:
    job = make(
        "qwen3:8b",
        options={"num_ctx": 8192},
        priority=3,
        sync=False,
        max_attempts=5,
        webhook_url=HOOK,
        idempotency_key="key-1",
    )
    assert store.add(job) == job
    fetched = store.get(job.id)
    assert fetched == job
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert fetched.created_at.microsecond == 123456


def test_every_field_round_trips_after_transitions(store: Store, make: Callable[..., Job]) -> None:
    job = store.add(make(sync=True))
    claimed = claim(store, [], T0 + SECOND)
    assert claimed is not None
    failed = store.save(jobs.fail(claimed, T0 + 2 * SECOND, "boom"), expected=JobState.LOADING)
    assert store.get(job.id) == failed
    assert failed.started_at == T0 + SECOND
    assert failed.finished_at == T0 + 2 * SECOND
    assert failed.error == "boom"


def test_get_of_an_unknown_job_raises(store: Store) -> None:
    with pytest.raises(JobNotFound):
        store.get("0" * 26)


def test_same_idempotency_key_and_fingerprint_returns_the_earlier_job(
    store: Store, make: Callable[..., Job]
) -> None:
    first = store.add(make(idempotency_key="k"))
    again = store.add(make(idempotency_key="k"))
    assert again == first
    assert store.count_queued() == 1


def test_same_idempotency_key_with_another_submission_conflicts(
    store: Store, make: Callable[..., Job]
) -> None:
    first = store.add(make(idempotency_key="k"))
    with pytest.raises(IdempotencyConflict) as caught:
        store.add(make(idempotency_key="k", priority=7))
    assert caught.value.job_id == first.id
    assert store.count_queued() == 1


def test_idempotent_replay_is_answered_even_when_the_queue_is_full(
    store: Store, make: Callable[..., Job]
) -> None:
    first = store.add(make(idempotency_key="k"))
    assert store.add(make(idempotency_key="k"), max_queued=1) == first


def test_queue_full_counts_only_queued_jobs(store: Store, make: Callable[..., Job]) -> None:
    store.add(make())
    store.add(make())
    with pytest.raises(QueueFull) as caught:
        store.add(make(), max_queued=2)
    assert caught.value.limit == 2
    assert store.count_queued() == 2
    assert claim(store) is not None
    third = store.add(make(), max_queued=2)
    assert store.get(third.id) == third


# -- save, artifacts -----------------------------------------------------------------------


def test_save_refuses_a_stale_expectation_and_changes_nothing(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    with pytest.raises(StaleJob) as caught:
        store.save(
            jobs.cancel(job, T0),
            expected=JobState.WORKING,
            artifacts=[Artifact("completion", "text/plain", b"x")],
        )
    assert caught.value.actual == JobState.QUEUED
    assert store.get(job.id) == job
    assert store.list_artifacts(job.id) == []


def test_save_of_an_unknown_job_raises(store: Store, make: Callable[..., Job]) -> None:
    with pytest.raises(JobNotFound):
        store.save(jobs.cancel(make(), T0), expected=JobState.QUEUED)


def test_artifacts_are_stored_with_the_transition_and_replaced_by_name(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    claimed = claim(store, [job.residency])
    assert claimed is not None
    done = jobs.complete(claimed, T0, b"{}")
    store.save(
        done,
        expected=JobState.WORKING,
        artifacts=[
            Artifact("thinking", "text/plain", b"hmm"),
            Artifact("completion", "text/plain", b"first"),
        ],
    )
    assert store.get_artifact(job.id, "completion") == Artifact(
        "completion", "text/plain", b"first"
    )
    # A finished job cannot move again, but a save to the same state may still add artifacts.
    store.save(
        done,
        expected=JobState.DONE,
        artifacts=[Artifact("completion", "application/octet-stream", b"\x00\xff")],
    )
    assert store.list_artifacts(job.id) == [
        Artifact("completion", "application/octet-stream", b"\x00\xff"),
        Artifact("thinking", "text/plain", b"hmm"),
    ]


def test_artifact_lookups_distinguish_missing_job_and_missing_artifact(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    with pytest.raises(ArtifactNotFound):
        store.get_artifact(job.id, "completion")
    with pytest.raises(JobNotFound):
        store.get_artifact("9" * 26, "completion")
    with pytest.raises(JobNotFound):
        store.list_artifacts("9" * 26)


# -- claim ----------------------------------------------------------------------------------


def test_claim_of_an_empty_queue_is_none(store: Store) -> None:
    assert claim(store) is None


def test_claim_increments_attempts_and_loads_a_cold_model(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    claimed = claim(store, ["other:latest"], T0 + SECOND)
    assert claimed == jobs.claim(job, T0 + SECOND, resident=False)
    assert claimed is not None and claimed.state == JobState.LOADING and claimed.attempts == 1
    assert store.get(job.id) == claimed
    assert claim(store, [], T0 + SECOND) is None


def test_claim_of_a_resident_model_goes_straight_to_working(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    claimed = claim(store, [job.residency])
    assert claimed is not None and claimed.state == JobState.WORKING


def test_claim_skips_jobs_in_backoff(store: Store, make: Callable[..., Job]) -> None:
    job = store.add(make())
    claimed = claim(store)
    assert claimed is not None
    store.save(
        jobs.requeue(claimed, T0, not_before=T0 + 5 * SECOND, error="busy"),
        expected=JobState.LOADING,
    )
    assert claim(store, [], T0 + 4 * SECOND) is None
    assert store.next_not_before(T0) == T0 + 5 * SECOND
    assert store.next_not_before(T0 + 5 * SECOND) is None
    again = claim(store, [], T0 + 5 * SECOND)
    assert again is not None and again.id == job.id and again.attempts == 2


def test_claim_order_priority_then_residency_then_fifo(
    store: Store, make: Callable[..., Job]
) -> None:
    older_cold = store.add(make("a", at=T0))
    warm_b = store.add(make("b", at=T0 + SECOND))
    warm_c = store.add(make("c", at=T0 + SECOND))
    urgent = store.add(make("d", at=T0 + 2 * SECOND, priority=5))
    resident = ["c:latest", "b:latest"]
    now = T0 + 3 * SECOND
    order = []
    while (claimed := claim(store, resident, now)) is not None:
        order.append(claimed.id)
    assert order == [urgent.id, warm_c.id, warm_b.id, older_cold.id]


def test_claim_takes_an_overdue_job_before_any_priority(
    store: Store, make: Callable[..., Job]
) -> None:
    old = store.add(make("a", at=T0))
    urgent = store.add(make("b", at=T0 + SECOND, priority=9))
    store.add(make("b", at=T0 + 2 * SECOND, priority=9))
    # Exactly max_wait is not overdue; one microsecond more is.
    first = claim(store, ["b:latest"], T0 + MAX_WAIT)
    second = claim(store, ["b:latest"], T0 + MAX_WAIT + timedelta(microseconds=1))
    assert first is not None and first.id == urgent.id
    assert second is not None and second.id == old.id


def test_fifo_ties_on_creation_time_are_broken_by_id(
    store: Store, make: Callable[..., Job]
) -> None:
    first = store.add(make("a"))
    second = store.add(make("b"))
    assert [claim(store), claim(store)] == [
        jobs.claim(first, T0, resident=False),
        jobs.claim(second, T0, resident=False),
    ]


def test_concurrent_claimers_never_share_a_job(store: Store, make: Callable[..., Job]) -> None:
    added = {store.add(make(f"m{n % 3}", sync=True)).id for n in range(60)}
    claimed: list[str] = []
    guard = threading.Lock()

    def drain() -> None:
        while (job := claim(store)) is not None:
            with guard:
                claimed.append(job.id)

    workers = [threading.Thread(target=drain) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed) == sorted(added)


job_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # model
        st.sampled_from([None, {"num_ctx": 4096}]),  # options
        st.sampled_from([0, 5, 10]),  # priority
        st.integers(0, 30),  # created, seconds after T0
        st.integers(0, 20),  # backoff, seconds after creation
    ),
    max_size=12,
)
residencies = st.lists(
    st.sampled_from(["a:latest", "b:latest", "c:latest", "a:latest|num_ctx=4096"]),
    max_size=3,
)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=job_specs, resident=residencies, now_offset=st.integers(0, 40))
def test_claim_and_queue_position_follow_the_scheduler(
    kind: str,
    specs: list[tuple[str, dict[str, int] | None, int, int, int]],
    resident: list[str],
    now_offset: int,
) -> None:
    ids = CountingIds()
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(kind, Path(directory), ids)
        try:
            stored = []
            for model, options, priority, created, backoff in specs:
                job = new_job(
                    job_id=ids.new_id(),
                    kind=CHAT,
                    model=model,
                    payload=b"{}",
                    now=T0 + created * SECOND,
                    options=options,
                    priority=priority,
                    sync=True,
                )
                stored.append(store.add(replace(job, not_before=job.created_at + backoff * SECOND)))
            order = [job.id for job in queue_order(stored, resident)]
            for job in stored:
                assert store.queue_position(job.id, resident) == order.index(job.id)
            now = T0 + now_offset * SECOND
            max_wait = timedelta(seconds=15)
            expected = choose_next(stored, resident, now, max_wait)
            claimed = store.claim_next(resident=resident, now=now, max_wait=max_wait)
            if expected is None:
                assert claimed is None
            else:
                assert claimed == jobs.claim(expected, now, resident=expected.residency in resident)
                assert store.queue_position(expected.id, resident) is None
        finally:
            store.close()


# -- a job claimed as it arrives, a transition saved later (ADR 0015) ------------------------


def test_add_claimed_stores_a_new_job_already_claimed_with_both_its_events(
    store: Store, make: Callable[..., Job]
) -> None:
    job = make(webhook_url=HOOK)
    claimed = jobs.claim(job, T0 + SECOND, resident=False)
    assert store.add_claimed(job, claimed) == claimed
    stored = store.get(job.id)
    assert (stored.state, stored.attempts, stored.started_at) == (
        JobState.LOADING,
        1,
        T0 + SECOND,
    )
    assert store.count_queued() == 0 and claim(store, [], T0 + SECOND) is None
    states = []
    while due := store.due_deliveries(T0 + MAX_WAIT):
        states.append(due[0].event.state)
        store.mark_delivered(due[0].event.event_id, T0 + MAX_WAIT)
    assert states == [JobState.QUEUED, JobState.LOADING]
    working = store.save(jobs.mark_working(stored, T0 + 2 * SECOND), expected=JobState.LOADING)
    assert store.get(job.id) == working


def test_add_claimed_takes_only_the_claim_of_a_new_job_without_an_idempotency_key(
    store: Store, make: Callable[..., Job]
) -> None:
    job, other = make(), make()
    with pytest.raises(ValueError):
        store.add_claimed(job, jobs.claim(other, T0, resident=True))
    with pytest.raises(ValueError):
        store.add_claimed(job, job)
    keyed = make(idempotency_key="k")
    with pytest.raises(ValueError):
        store.add_claimed(keyed, jobs.claim(keyed, T0, resident=True))
    assert store.list().jobs == []


def test_a_transition_saved_later_is_seen_by_every_later_call(
    store: Store, make: Callable[..., Job]
) -> None:
    job = make(sync=True)
    working = store.add_claimed(job, jobs.claim(job, T0, resident=True))
    done = jobs.complete(working, T0 + SECOND, None)
    store.save_later(done, expected=JobState.WORKING)
    assert store.get(job.id) == done
    store.save_later(done, expected=JobState.WORKING)  # stale by now: dropped
    assert [j.id for j in store.list(state=JobState.DONE).jobs] == [job.id]
    assert store.list(state=JobState.WORKING).jobs == []
    with pytest.raises(InvalidTransition):
        store.save(jobs.cancel(store.get(job.id), T0 + 2 * SECOND), expected=JobState.DONE)


def test_a_transition_saved_later_is_written_with_the_next_write_even_a_refused_one(
    store: Store, make: Callable[..., Job]
) -> None:
    store.add(make())
    job = make(sync=True)
    working = store.add_claimed(job, jobs.claim(job, T0, resident=True))
    store.save_later(jobs.complete(working, T0 + SECOND, None), expected=JobState.WORKING)
    with pytest.raises(QueueFull):
        store.add(make(), max_queued=1)
    assert store.get(job.id).state == JobState.DONE
    assert store.count_queued() == 1


def test_a_transition_saved_later_whose_job_moved_on_is_dropped(
    store: Store, make: Callable[..., Job]
) -> None:
    job = make(sync=True)
    working = store.add_claimed(job, jobs.claim(job, T0, resident=True))
    cancelled = store.save(jobs.cancel(working, T0 + SECOND), expected=JobState.WORKING)
    store.save_later(jobs.complete(working, T0 + 2 * SECOND, None), expected=JobState.WORKING)
    assert store.get(job.id) == cancelled
    assert store.add(make()).state == JobState.QUEUED


# -- listing ---------------------------------------------------------------------------------


def test_list_is_newest_first_and_pages_by_cursor(store: Store, make: Callable[..., Job]) -> None:
    added = [store.add(make()) for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(limit=3, cursor=cursor)
        seen += [job.id for job in page.jobs]
        pages += 1
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.jobs[-1].id
        cursor = page.next_cursor
    assert seen == [job.id for job in reversed(added)]
    assert pages == 3


def test_a_page_that_ends_exactly_at_the_last_job_has_no_cursor(
    store: Store, make: Callable[..., Job]
) -> None:
    for _ in range(3):
        store.add(make())
    page = store.list(limit=3)
    assert len(page.jobs) == 3 and page.next_cursor is None


def test_list_filters_by_state_and_normalised_model(store: Store, make: Callable[..., Job]) -> None:
    llama = store.add(make("llama3.2"))
    store.add(make("qwen3:8b"))
    running = claim(store)
    assert running is not None and running.id == llama.id
    assert [j.id for j in store.list(model="llama3.2").jobs] == [llama.id]
    assert [j.id for j in store.list(model="llama3.2:latest").jobs] == [llama.id]
    assert [j.model for j in store.list(state=JobState.QUEUED).jobs] == ["qwen3:8b"]
    assert store.list(state=JobState.LOADING, model="qwen3:8b").jobs == []
    assert store.list(state=JobState.LOADING).jobs == [running]


@pytest.mark.parametrize("cursor", ["", "abc", "0" * 25 + "U", "0" * 27])
def test_a_malformed_cursor_is_refused(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError):
        store.list(cursor=cursor)


# -- recovery, pruning ------------------------------------------------------------------------


def test_recovery_requeues_async_fails_exhausted_and_sync(
    store: Store, make: Callable[..., Job]
) -> None:
    retryable = store.add(make("a", max_attempts=3))
    exhausted = store.add(make("b", max_attempts=1))
    sync = store.add(make("c", sync=True, priority=0))
    waiting = store.add(make("d", at=T0 + SECOND))
    for resident in (["a:latest"], [], ["c:latest"]):
        assert claim(store, resident, T0 + SECOND) is not None
    later = T0 + 9 * SECOND
    recovered = {job.id: job for job in store.recover_interrupted(later)}
    assert set(recovered) == {retryable.id, exhausted.id, sync.id}
    requeued = store.get(retryable.id)
    assert requeued.state == JobState.QUEUED and requeued.attempts == 1
    assert requeued.not_before == later and requeued.error
    assert store.get(exhausted.id).state == JobState.FAILED
    assert store.get(sync.id).state == JobState.FAILED
    assert store.get(sync.id).finished_at == later
    assert store.get(waiting.id) == waiting
    assert recovered[retryable.id] == requeued
    assert store.recover_interrupted(later) == []
    assert store.summary().running == []


def test_prune_deletes_only_jobs_finished_before_the_cutoff_with_all_they_own(
    store: Store, make: Callable[..., Job]
) -> None:
    old = store.add(make(webhook_url=HOOK, idempotency_key="old"))
    claimed = claim(store, [old.residency], T0)
    assert claimed is not None
    store.save(
        jobs.complete(claimed, T0 + SECOND, b"r"),
        expected=JobState.WORKING,
        artifacts=[Artifact("completion", "text/plain", b"text")],
    )
    recent = run_to_done(store, store.add(make(webhook_url=HOOK)), T0 + 5 * SECOND)
    queued = store.add(make(webhook_url=HOOK))
    assert store.prune_finished(T0 + 5 * SECOND) == 1
    with pytest.raises(JobNotFound):
        store.get(old.id)
    with pytest.raises(JobNotFound):
        store.get_artifact(old.id, "completion")
    assert {d.event.job_id for d in store.due_deliveries(T0 + MAX_WAIT)} == {
        recent.id,
        queued.id,
    }
    # The idempotency key went with its job.
    assert store.add(make(idempotency_key="old", priority=4)).priority == 4
    assert store.prune_finished(T0 + 6 * SECOND) == 1
    assert store.get(queued.id) == queued


# -- queue views -----------------------------------------------------------------------------


def test_queue_position_of_a_job_that_is_not_queued_is_none(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make())
    assert store.queue_position(job.id, []) == 0
    claim(store)
    assert store.queue_position(job.id, []) is None
    with pytest.raises(JobNotFound):
        store.queue_position("5" * 26, [])


def test_summary_counts_queued_per_model_and_priority(
    store: Store, make: Callable[..., Job]
) -> None:
    empty = store.summary()
    assert (empty.running, empty.queued, empty.oldest_queued_at) == ([], [], None)
    first = store.add(make("b", at=T0 + SECOND, priority=2))
    store.add(make("b", at=T0 + 2 * SECOND))
    store.add(make("b", at=T0 + 3 * SECOND, priority=2))
    store.add(make("b", at=T0 + 4 * SECOND))
    store.add(make("a", at=T0 + 5 * SECOND))
    running = claim(store, [], T0 + 6 * SECOND)
    summary = store.summary()
    assert running is not None and running.id == first.id
    assert summary.running == [running]
    assert summary.queued == [
        QueuedGroup("a:latest", 0, 1),
        QueuedGroup("b:latest", 0, 2),
        QueuedGroup("b:latest", 2, 1),
    ]
    assert summary.queued_total == store.count_queued() == 4
    assert summary.oldest_queued_at == T0 + 2 * SECOND


# -- webhook outbox ---------------------------------------------------------------------------


def test_only_async_jobs_with_a_webhook_record_events(
    store: Store, make: Callable[..., Job]
) -> None:
    store.add(make(sync=True, webhook_url=HOOK))
    store.add(make())
    hooked = store.add(make(webhook_url=HOOK))
    due = store.due_deliveries(T0)
    assert [(d.event.job_id, d.event.state, d.event.previous_state) for d in due] == [
        (hooked.id, JobState.QUEUED, None)
    ]
    assert due[0].delivery_attempts == 0 and due[0].next_attempt_at == T0
    assert due[0].event.url == HOOK and due[0].event.timestamp == T0
    assert store.next_delivery_at() == T0


def test_events_of_one_job_are_due_one_at_a_time_in_order(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make(webhook_url=HOOK))
    claimed = claim(store, [], T0 + SECOND)
    assert claimed is not None
    store.save(jobs.fail(claimed, T0 + 2 * SECOND, "bad"), expected=JobState.LOADING)
    later = T0 + MAX_WAIT
    states = []
    while due := store.due_deliveries(later):
        assert len(due) == 1 and due[0].event.job_id == job.id
        states.append(due[0].event.state)
        store.mark_delivered(due[0].event.event_id, later)
    assert states == [JobState.QUEUED, JobState.LOADING, JobState.FAILED]
    assert store.next_delivery_at() is None


def test_failed_delivery_is_redelivered_later_and_holds_back_the_next_event(
    store: Store, make: Callable[..., Job]
) -> None:
    job = store.add(make(webhook_url=HOOK))
    claim(store, [], T0)
    first = store.due_deliveries(T0)[0]
    retry_at = T0 + 30 * SECOND
    store.mark_failed_attempt(first.event.event_id, next_attempt_at=retry_at, error="503")
    assert store.due_deliveries(T0 + 29 * SECOND) == []
    assert store.next_delivery_at() == retry_at
    again = store.due_deliveries(retry_at)
    assert [(d.event, d.delivery_attempts, d.next_attempt_at) for d in again] == [
        (first.event, 1, retry_at)
    ]
    store.mark_failed_attempt(first.event.event_id, next_attempt_at=None, error="gave up")
    (second,) = store.due_deliveries(retry_at)
    assert second.event.job_id == job.id and second.event.state == JobState.LOADING
    assert second.event.attempts == 1


def test_due_deliveries_are_soonest_first_and_limited(
    store: Store, make: Callable[..., Job]
) -> None:
    a = store.add(make(webhook_url=HOOK, at=T0 + 2 * SECOND))
    b = store.add(make(webhook_url=HOOK, at=T0 + SECOND))
    c = store.add(make(webhook_url=HOOK, at=T0 + SECOND))
    later = T0 + 3 * SECOND
    assert [d.event.job_id for d in store.due_deliveries(later)] == [b.id, c.id, a.id]
    assert [d.event.job_id for d in store.due_deliveries(later, limit=2)] == [b.id, c.id]


def test_marking_an_unknown_event_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.mark_delivered("7" * 26, T0)
    with pytest.raises(KeyError):
        store.mark_failed_attempt("7" * 26, next_attempt_at=None, error="x")


def test_every_state_write_records_its_event(store: Store, make: Callable[..., Job]) -> None:
    job = store.add(make(webhook_url=HOOK, max_attempts=2))
    claimed = claim(store, [], T0)
    assert claimed is not None
    store.recover_interrupted(T0 + SECOND)
    store.save(jobs.cancel(store.get(job.id), T0 + 2 * SECOND), expected=JobState.QUEUED)
    events = []
    while due := store.due_deliveries(T0 + MAX_WAIT):
        events.append(due[0].event)
        store.mark_delivered(due[0].event.event_id, T0)
    assert [(e.previous_state, e.state, e.attempts) for e in events] == [
        (None, JobState.QUEUED, 0),
        (JobState.QUEUED, JobState.LOADING, 1),
        (JobState.LOADING, JobState.QUEUED, 1),
        (JobState.QUEUED, JobState.CANCELLED, 1),
    ]
    assert len({e.event_id for e in events}) == 4


# -- SQLite only -------------------------------------------------------------------------------


def test_sqlite_store_keeps_everything_across_close_and_reopen(
    tmp_path: Path, ids: CountingIds, make: Callable[..., Job]
) -> None:
    path = tmp_path / "foreman.db"
    store = SqliteJobStore(path, ids)
    queued = store.add(make("a", webhook_url=HOOK, idempotency_key="k"))
    done = run_to_done(store, store.add(make("b", priority=1)), T0 + SECOND)
    store.save(
        done, expected=JobState.DONE, artifacts=[Artifact("completion", "text/plain", b"hi")]
    )
    events = store.due_deliveries(T0 + MAX_WAIT)
    store.close()
    store.close()

    reopened = SqliteJobStore(path, ids)
    try:
        assert reopened.get(queued.id) == queued
        assert reopened.get(done.id) == done
        assert reopened.get_artifact(done.id, "completion").data == b"hi"
        assert reopened.due_deliveries(T0 + MAX_WAIT) == events
        assert reopened.add(make("a", webhook_url=HOOK, idempotency_key="k")) == queued
    finally:
        reopened.close()


def test_sqlite_store_opens_in_wal_mode_at_the_current_schema_version(
    tmp_path: Path, ids: CountingIds
) -> None:
    SqliteJobStore(tmp_path / "foreman.db", ids).close()
    conn = sqlite3.connect(tmp_path / "foreman.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteJobStore(tmp_path / "foreman.db", ids)


def test_sqlite_claim_queries_walk_indexes_and_never_sort(tmp_path: Path, ids: CountingIds) -> None:
    SqliteJobStore(tmp_path / "foreman.db", ids).close()
    conn = sqlite3.connect(tmp_path / "foreman.db")
    try:
        for query in CLAIM_QUERIES:
            params = (0,) * query.count("?")
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
            assert len(plan) == 1, plan
            assert "USING INDEX idx_jobs_queued_" in plan[0], plan
    finally:
        conn.close()


def _write(store: SqliteJobStore, make: Callable[..., Job], jobs_of_4_kb: int) -> None:
    payload = b"x" * 4000
    for _ in range(jobs_of_4_kb):
        store.add(replace(make(sync=True), payload=payload))


def test_the_sqlite_store_checkpoints_the_wal_in_the_background(
    tmp_path: Path, make: Callable[..., Job], ids: CountingIds
) -> None:
    # Fewer pages than SQLite's own checkpoint waits for: only the store's thread copies them.
    path = tmp_path / "foreman.db"
    store = SqliteJobStore(path, ids, checkpoint_interval=0.01)
    ticks = _count_ticks(store)
    try:
        before = path.stat().st_size
        _write(store, make, 200)
        # A tick starting from now checkpoints them; the next tick begins after it has.
        ticks.wait_past(ticks.count + 2)
        assert path.stat().st_size > before
    finally:
        store.close()


class _Ticks:
    """Counts the checkpoint thread's ticks; lets a test wait for one."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def tick(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_past(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count > count, timeout=10)


def _count_ticks(store: SqliteJobStore) -> _Ticks:
    """Count `store`'s checkpoint ticks, each once it has written what was pending (its
    checkpoint follows; the next tick begins after that)."""
    ticks = _Ticks()
    own = store._checkpointer._on_tick

    def tick() -> None:
        own()
        ticks.tick()

    store._checkpointer._on_tick = tick
    return ticks


def test_the_sqlite_store_writes_what_it_saves_later_on_its_own_and_when_closed(
    tmp_path: Path, make: Callable[..., Job], ids: CountingIds
) -> None:
    path = tmp_path / "foreman.db"
    store = SqliteJobStore(path, ids, checkpoint_interval=0.01)
    reader = SqliteJobStore(path, ids, checkpoint_interval=3600)  # sees only what is written
    ticks = _count_ticks(store)
    try:
        first, second = make(sync=True), make(sync=True)
        with store._lock:  # the checkpoint thread leaves a store in use alone
            for job in (first, second):
                working = store.add_claimed(job, jobs.claim(job, T0, resident=True))
                store.save_later(jobs.complete(working, T0, None), expected=JobState.WORKING)
            assert reader.get(second.id).state == JobState.WORKING  # both pending
        # With nothing else using the store, a tick of its checkpoint thread that starts from
        # now writes them: the second tick to end from now on did.
        ticks.wait_past(ticks.count + 1)
        assert reader.get(first.id).state == reader.get(second.id).state == JobState.DONE

        third = make(sync=True)
        working = store.add_claimed(third, jobs.claim(third, T0, resident=True))
        store._checkpointer.stop()  # no thread to write it: only close() can
        store.save_later(jobs.complete(working, T0, None), expected=JobState.WORKING)
        store.close()
        assert reader.get(third.id).state == JobState.DONE
    finally:
        store.close()
        reader.close()


def test_writes_faster_than_the_background_checkpoints_still_keep_the_wal_short(
    tmp_path: Path, make: Callable[..., Job], ids: CountingIds
) -> None:
    path = tmp_path / "foreman.db"
    store = SqliteJobStore(path, ids, checkpoint_interval=3600)  # the thread never gets to it
    try:
        _write(store, make, 5000)  # ~20 MB
        assert Path(f"{path}-wal").stat().st_size < 8 << 20
    finally:
        store.close()


def test_two_sqlite_stores_on_one_file_never_claim_the_same_job(
    tmp_path: Path, ids: CountingIds, make: Callable[..., Job]
) -> None:
    first = SqliteJobStore(tmp_path / "foreman.db", ids)
    second = SqliteJobStore(tmp_path / "foreman.db", ids)
    try:
        added = {first.add(make(sync=True)).id for _ in range(40)}
        claimed: list[str] = []
        guard = threading.Lock()

        def drain(store: SqliteJobStore) -> None:
            while (job := claim(store)) is not None:
                with guard:
                    claimed.append(job.id)

        workers = [threading.Thread(target=drain, args=(s,)) for s in (first, second) * 2]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(claimed) == sorted(added)
    finally:
        first.close()
        second.close()
