"""Drain-by-model scheduling: which queued job the single worker runs next.

Among queued jobs whose backoff has passed:
1. a job that has waited longer than `max_wait` goes first, oldest first (nobody starves);
2. otherwise the highest priority;
3. within it, a job whose residency is already loaded, most recently used residency first
   (a backlog interleaving models A B A B costs one swap, not one per job);
4. otherwise first come, first served.

The policy is `choose_among`, written once against three questions (`EligibleJobs`):
`choose_next` asks them of jobs in memory, a store of its indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Protocol

from foreman_core.job import Job, JobState


def is_eligible(job: Job, now: datetime) -> bool:
    """Queued and past its retry backoff."""
    return job.state == JobState.QUEUED and job.not_before <= now


def is_overdue(job: Job, now: datetime, max_wait: timedelta) -> bool:
    """Waited longer than the starvation bound."""
    return now - job.created_at > max_wait


class EligibleJobs(Protocol):
    """The queued jobs past their backoff, as the three questions the policy asks of them.

    Each answer is one job, ties going to the first come (`Job.fifo_key`), or None when no job
    fits: a store can answer each with one index seek instead of loading the queue.
    """

    def oldest(self) -> Job | None:
        """The first come of all."""
        ...

    def highest_priority(self) -> Job | None:
        """The first come among those of the highest priority."""
        ...

    def oldest_of(self, priority: int, residency: str) -> Job | None:
        """The first come among those of this priority and residency."""
        ...


def choose_among(
    eligible: EligibleJobs, resident: Sequence[str], now: datetime, max_wait: timedelta
) -> Job | None:
    """The policy itself: the job to dispatch next among `eligible`, or None when it is empty.

    `choose_next` runs it on jobs in memory; a store runs it on its indexes.
    """
    oldest = eligible.oldest()
    if oldest is None:
        return None
    # The oldest eligible job is overdue exactly when any eligible job is.
    if is_overdue(oldest, now, max_wait):
        return oldest
    top = eligible.highest_priority()
    assert top is not None  # `oldest` is eligible, so some job has the highest priority
    for residency in resident:
        if residency == top.residency:
            # `top` is the first come at its priority, so the first of its residency too.
            return top
        warm = eligible.oldest_of(top.priority, residency)
        if warm is not None:
            return warm
    return top


_fifo = attrgetter("created_at", "id")
"""`Job.fifo_key`, as a key function that costs less than the property (the claim's hot path)."""


class _EligibleInMemory:
    """EligibleJobs over a list of jobs, each answer one pass over it."""

    def __init__(self, jobs: list[Job]) -> None:
        self._jobs = jobs
        self._oldest = min(jobs, key=_fifo, default=None)

    def oldest(self) -> Job | None:
        return self._oldest

    def highest_priority(self) -> Job | None:
        if self._oldest is None:
            return None
        top = max(job.priority for job in self._jobs)
        if self._oldest.priority == top:
            return self._oldest  # the first come of all is the first at its priority too
        return min((job for job in self._jobs if job.priority == top), key=_fifo)

    def oldest_of(self, priority: int, residency: str) -> Job | None:
        return min(
            (job for job in self._jobs if job.priority == priority and job.residency == residency),
            key=_fifo,
            default=None,
        )


def choose_next(
    queued: Iterable[Job],
    resident: Sequence[str],
    now: datetime,
    max_wait: timedelta,
) -> Job | None:
    """The job to dispatch next, or None when no job is eligible.

    `resident` lists the loaded residencies, most recently used first.
    """
    eligible = [job for job in queued if is_eligible(job, now)]
    return choose_among(_EligibleInMemory(eligible), resident, now, max_wait)


def group_rank(
    residency: str, oldest: tuple[datetime, str], resident: Sequence[str]
) -> tuple[int, int, tuple[datetime, str]]:
    """Where the jobs of one residency stand among the others of their priority in
    `queue_order` (smaller first): the resident ones first, most recently used first, then the
    others by their oldest job (`oldest`, its `fifo_key`)."""
    if residency in resident:
        return (0, resident.index(residency), oldest)
    return (1, 0, oldest)


def queue_order(queued: Iterable[Job], resident: Sequence[str]) -> list[Job]:
    """The order queued jobs would run in if nothing new arrived (see `JobStore.queue_position`).

    Priority descending; within a priority the resident residencies first, in MRU order, then
    every other residency in order of its oldest job; within a residency first come, first
    served. Backoffs and the starvation bound are ignored: this is an estimate for humans.
    """
    jobs = [job for job in queued if job.state == JobState.QUEUED]
    oldest: dict[tuple[int, str], tuple[datetime, str]] = {}
    for job in jobs:
        group = (job.priority, job.residency)
        if group not in oldest or job.fifo_key < oldest[group]:
            oldest[group] = job.fifo_key
    ranks = {group: group_rank(group[1], first, resident) for group, first in oldest.items()}

    def order(job: Job) -> tuple[int, tuple[int, int, tuple[datetime, str]], tuple[datetime, str]]:
        return (-job.priority, ranks[(job.priority, job.residency)], job.fifo_key)

    return sorted(jobs, key=order)
