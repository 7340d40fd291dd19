"""Drain-by-model scheduling: which queued job the single worker runs next.

Among queued jobs whose backoff has passed (interface.md §Scheduling):
1. a job that has waited longer than `max_wait` goes first, oldest first (nobody starves);
2. otherwise the highest priority;
3. within it, a job whose residency is already loaded, most recently used residency first
   (a backlog interleaving models A B A B costs one swap, not one per job);
4. otherwise first come, first served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from foreman_core.job import Job, JobState


def is_eligible(job: Job, now: datetime) -> bool:
    """Queued and past its retry backoff."""
    return job.state == JobState.QUEUED and job.not_before <= now


def is_overdue(job: Job, now: datetime, max_wait: timedelta) -> bool:
    """Waited longer than the starvation bound."""
    return now - job.created_at > max_wait


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
    if not eligible:
        return None
    overdue = [job for job in eligible if is_overdue(job, now, max_wait)]
    if overdue:
        return min(overdue, key=lambda job: job.fifo_key)
    top = max(job.priority for job in eligible)
    candidates = [job for job in eligible if job.priority == top]
    for residency in resident:
        warm = [job for job in candidates if job.residency == residency]
        if warm:
            return min(warm, key=lambda job: job.fifo_key)
    return min(candidates, key=lambda job: job.fifo_key)


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
    rank = {residency: index for index, residency in reversed(list(enumerate(resident)))}

    def order(job: Job) -> tuple[int, tuple[int, int, tuple[datetime, str]], tuple[datetime, str]]:
        warm = rank.get(job.residency)
        group_rank = (
            (0, warm, oldest[(job.priority, job.residency)])
            if warm is not None
            else (1, 0, oldest[(job.priority, job.residency)])
        )
        return (-job.priority, group_rank, job.fifo_key)

    return sorted(jobs, key=order)
