"""The queue's questions, asked of the `jobs` table's partial indexes: the scheduler's, for the
claim, and those of the queue's position, size and summary.

The scheduling order is the core's (`foreman_core.scheduler`): the claim runs its policy,
`choose_among`, answering each of its questions with one index seek, and a position is
counted in its `queue_order`, residencies ranked by its `group_rank`. Each function runs on a
connection the caller holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from foreman_adapters.sqlite.rows import (
    SELECT_JOB,
    first_job,
    from_us,
    from_us_or_none,
    running_jobs,
    to_us,
)
from foreman_core.job import Job
from foreman_core.ports import QueuedGroup, QueueSummary
from foreman_core.scheduler import choose_among, group_rank

# The claim's queries, the three questions of `EligibleJobs`. Each is pinned to its partial
# index: the planner, lacking statistics, might otherwise pick a range on not_before and sort a
# million rows.
OLDEST_ELIGIBLE_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_fifo"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY created_at, id LIMIT 1"
)
HIGHEST_PRIORITY_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_priority"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY priority DESC, created_at, id LIMIT 1"
)
OLDEST_OF_RESIDENCY_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_residency"
    " WHERE state = 'queued' AND priority = ? AND residency = ? AND not_before <= ?"
    " ORDER BY created_at, id LIMIT 1"
)
CLAIM_QUERIES = (OLDEST_ELIGIBLE_SQL, HIGHEST_PRIORITY_SQL, OLDEST_OF_RESIDENCY_SQL)
"""The queries `choose_next` runs, exposed so tests can check they walk indexes."""


class _EligibleIndexed:
    """`EligibleJobs` over the stored jobs: each answer one seek on a partial index."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self._conn = conn
        self._now = to_us(now)

    def oldest(self) -> Job | None:
        return first_job(self._conn, OLDEST_ELIGIBLE_SQL, (self._now,))

    def highest_priority(self) -> Job | None:
        return first_job(self._conn, HIGHEST_PRIORITY_SQL, (self._now,))

    def oldest_of(self, priority: int, residency: str) -> Job | None:
        return first_job(self._conn, OLDEST_OF_RESIDENCY_SQL, (priority, residency, self._now))


def choose_next(
    conn: sqlite3.Connection, resident: Sequence[str], now: datetime, max_wait: timedelta
) -> Job | None:
    """`scheduler.choose_next` over the stored jobs: the core's policy on the indexes."""
    return choose_among(_EligibleIndexed(conn, now), resident, now, max_wait)


def count_queued(conn: sqlite3.Connection, *, up_to: int = -1) -> int:
    """Queued jobs, counting no further than `up_to` (-1: all)."""
    count: int = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY idx_jobs_state_id"
        " WHERE state = 'queued' LIMIT ?)",
        (up_to,),
    ).fetchone()[0]
    return count


def summary(conn: sqlite3.Connection) -> QueueSummary:
    """Running jobs, queued counts per model and priority, the oldest queued job's time."""
    groups = conn.execute(
        "SELECT model, priority, COUNT(*) FROM jobs WHERE state = 'queued'"
        " GROUP BY model, priority ORDER BY model, priority"
    ).fetchall()
    oldest = conn.execute(
        "SELECT MIN(created_at) FROM jobs INDEXED BY idx_jobs_queued_fifo WHERE state = 'queued'"
    ).fetchone()[0]
    return QueueSummary(
        running=running_jobs(conn),
        queued=[QueuedGroup(model, priority, count) for model, priority, count in groups],
        oldest_queued_at=from_us_or_none(oldest),
    )


def next_not_before(conn: sqlite3.Connection, now: datetime) -> datetime | None:
    """The earliest backoff end after `now` among queued jobs."""
    value = conn.execute(
        "SELECT MIN(not_before) FROM jobs INDEXED BY idx_jobs_queued_not_before"
        " WHERE state = 'queued' AND not_before > ?",
        (to_us(now),),
    ).fetchone()[0]
    return from_us_or_none(value)


def queue_position(conn: sqlite3.Connection, job: Job, resident: Sequence[str]) -> int:
    """How many queued jobs come before `job` in `scheduler.queue_order`."""
    ahead: int = conn.execute(
        "SELECT COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_priority"
        " WHERE state = 'queued' AND priority > ?",
        (job.priority,),
    ).fetchone()[0]

    def rank(residency: str) -> tuple[int, int, tuple[datetime, str]]:
        created_at, oldest_id = conn.execute(
            "SELECT created_at, id FROM jobs INDEXED BY idx_jobs_queued_residency"
            " WHERE state = 'queued' AND priority = ? AND residency = ?"
            " ORDER BY created_at, id LIMIT 1",
            (job.priority, residency),
        ).fetchone()
        return group_rank(residency, (from_us(created_at), oldest_id), resident)

    own_rank = rank(job.residency)
    groups = conn.execute(
        "SELECT residency, COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_residency"
        " WHERE state = 'queued' AND priority = ? GROUP BY residency",
        (job.priority,),
    ).fetchall()
    for residency, count in groups:
        if residency != job.residency and rank(residency) < own_rank:
            ahead += count
    same_residency: int = conn.execute(
        "SELECT COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_residency"
        " WHERE state = 'queued' AND priority = ? AND residency = ? AND (created_at, id) < (?, ?)",
        (job.priority, job.residency, to_us(job.created_at), job.id),
    ).fetchone()[0]
    return ahead + same_residency
