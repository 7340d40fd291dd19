"""Properties of the drain-by-model scheduler (`choose_next`) and its estimate (`queue_order`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from foreman_core.job import Job, JobState, new_job
from foreman_core.scheduler import choose_next, is_eligible, is_overdue, queue_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RESIDENCIES = ["a:latest", "b:latest", "c:latest", "a:latest|num_ctx=8192"]
FOREVER = timedelta(days=365)


def make_job(
    number: int,
    residency: str,
    *,
    created: datetime = T0,
    priority: int = 0,
    not_before: datetime | None = None,
) -> Job:
    """A queued job for `residency`; `number` orders ids."""
    job = new_job(
        job_id=f"{number:026d}",
        kind="chat",
        model=residency.split("|", 1)[0],
        payload=b"{}",
        now=created,
        priority=priority,
    )
    return replace(job, residency=residency, not_before=not_before or created)


@st.composite
def queues(draw: st.DrawFn, *, priorities: int = 3, backoff: bool = True) -> list[Job]:
    """Queued jobs over a few residencies, priorities, arrival times and backoffs."""
    jobs = []
    for number in range(draw(st.integers(0, 14))):
        created = T0 + timedelta(seconds=draw(st.integers(0, 600)))
        delay = draw(st.integers(0, 300)) if backoff and draw(st.booleans()) else 0
        jobs.append(
            make_job(
                number,
                draw(st.sampled_from(RESIDENCIES)),
                created=created,
                priority=draw(st.integers(0, priorities - 1)),
                not_before=created + timedelta(seconds=delay),
            )
        )
    return jobs


residents = st.lists(st.sampled_from(RESIDENCIES), unique=True, max_size=3)
moments = st.integers(0, 1200).map(lambda s: T0 + timedelta(seconds=s))
waits = st.integers(0, 1200).map(lambda s: timedelta(seconds=s))


def first_in(jobs: list[Job]) -> Job:
    """First come, first served."""
    return min(jobs, key=lambda job: job.fifo_key)


@given(queues(), residents, moments, waits)
def test_the_choice_is_eligible_and_none_only_when_nothing_is(jobs, resident, now, max_wait):
    chosen = choose_next(jobs, resident, now, max_wait)
    eligible = [job for job in jobs if is_eligible(job, now)]
    if chosen is None:
        assert eligible == []
    else:
        assert chosen in eligible
        assert chosen.not_before <= now  # never a job in backoff


@given(queues(), residents, moments)
def test_nothing_is_chosen_while_every_job_is_in_backoff(jobs, resident, now):
    backing_off = [replace(job, not_before=now + timedelta(seconds=1)) for job in jobs]
    assert choose_next(backing_off, resident, now, timedelta(0)) is None


@given(queues(), residents, moments, waits)
def test_jobs_of_one_priority_and_residency_run_first_come_first_served(
    jobs, resident, now, max_wait
):
    chosen = choose_next(jobs, resident, now, max_wait)
    if chosen is None:
        return
    group = [
        job
        for job in jobs
        if is_eligible(job, now)
        and (job.priority, job.residency) == (chosen.priority, chosen.residency)
    ]
    # Even the starvation bound keeps this order: an older job of the group is overdue too.
    assert chosen == first_in(group)


@given(queues(), residents, moments, waits)
def test_an_overdue_job_goes_first_oldest_first(jobs, resident, now, max_wait):
    eligible = [job for job in jobs if is_eligible(job, now)]
    overdue = [job for job in eligible if is_overdue(job, now, max_wait)]
    if overdue:
        assert choose_next(jobs, resident, now, max_wait) == first_in(overdue)


@given(queues(), residents, moments, waits)
def test_the_resident_residency_is_drained_unless_overdue_or_outranked(
    jobs, resident, now, max_wait
):
    eligible = [job for job in jobs if is_eligible(job, now)]
    if not eligible or any(is_overdue(job, now, max_wait) for job in eligible):
        return
    chosen = choose_next(jobs, resident, now, max_wait)
    assert chosen is not None
    top = [job for job in eligible if job.priority == max(j.priority for j in eligible)]
    assert chosen in top
    warm = [residency for residency in resident if any(j.residency == residency for j in top)]
    if warm:
        assert chosen.residency == warm[0]  # the most recently used one with work
    else:
        assert chosen == first_in(top)


@given(
    st.lists(st.sampled_from(RESIDENCIES), min_size=1, max_size=40),
    st.sampled_from([None, *RESIDENCIES]),
)
def test_a_backlog_costs_one_swap_per_distinct_residency(residencies, loaded):
    pending = [
        make_job(n, residency, created=T0 + timedelta(seconds=n))
        for n, residency in enumerate(residencies)
    ]
    resident = [loaded] if loaded else []
    current, swaps = loaded, 0
    while pending:
        chosen = choose_next(pending, resident, T0 + timedelta(hours=1), FOREVER)
        assert chosen is not None
        pending.remove(chosen)
        if chosen.residency != current:
            swaps += 1
            current = chosen.residency
        resident = [chosen.residency, *(r for r in resident if r != chosen.residency)]
    distinct = set(residencies)
    assert swaps == len(distinct) - (1 if loaded in distinct else 0)


@given(
    duration=st.integers(5, 600),
    max_wait=st.integers(0, 3600),
    arrives_after=st.integers(0, 20),
    arrives_into_job=st.floats(0, 1, exclude_max=True),
    priority=st.integers(-2, 2),
)
def test_a_steady_stream_for_the_resident_model_starves_nobody(
    duration, max_wait, arrives_after, arrives_into_job, priority
):
    job_time, bound = timedelta(seconds=duration), timedelta(seconds=max_wait)
    resident = ["a:latest"]
    numbers = iter(range(10**6))
    now = T0
    pending = [make_job(next(numbers), "a:latest", created=now)]
    other: Job | None = None
    for step in range(max_wait // duration + arrives_after + 3):
        if step == arrives_after:
            # It arrives while the previous job ran; resident jobs keep arriving too.
            created = now - job_time * arrives_into_job
            other = make_job(next(numbers), "b:latest", created=created, priority=priority)
            pending.append(other)
        chosen = choose_next(pending, resident, now, bound)
        assert chosen is not None
        if chosen is other:
            assert now - other.created_at <= bound + job_time
            return
        pending.remove(chosen)
        now += job_time
        pending.append(make_job(next(numbers), "a:latest", created=now))
    raise AssertionError("the other model's job was never dispatched")


@given(queues(backoff=False), residents)
def test_queue_order_is_a_permutation_in_the_scheduler_order(jobs, resident):
    order = queue_order(jobs, resident)
    assert sorted(order, key=lambda job: job.id) == sorted(jobs, key=lambda job: job.id)
    priorities = [job.priority for job in order]
    assert priorities == sorted(priorities, reverse=True)
    for earlier, later in pairwise(order):
        if (earlier.priority, earlier.residency) == (later.priority, later.residency):
            assert earlier.fifo_key < later.fifo_key
        if earlier.priority == later.priority and later.residency in resident:
            # A resident residency is never behind a cold one, nor behind a less recent one.
            assert earlier.residency in resident
            assert resident.index(earlier.residency) <= resident.index(later.residency)


@given(queues(backoff=False), residents)
def test_queue_order_starts_with_the_scheduler_choice(jobs, resident):
    now = T0 + timedelta(seconds=600)
    order = queue_order(jobs, resident)
    assert (order[0] if order else None) == choose_next(jobs, resident, now, FOREVER)


@given(queues(), residents)
def test_queue_order_lists_only_queued_jobs(jobs, resident):
    running = [replace(job, state=JobState.WORKING) for job in jobs[:2]]
    order = queue_order(running + jobs[2:], resident)
    assert {job.id for job in order} == {job.id for job in jobs[2:]}
