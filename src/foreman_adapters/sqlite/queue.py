"""The scheduler's questions about queued jobs, asked of the `jobs` table's partial indexes.

Each function runs on a connection the caller holds, inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from foreman_adapters.sqlite.rows import SELECT_JOB, first_job, from_us_or_none, running_jobs, to_us
from foreman_core.job import Job
from foreman_core.ports import QueuedGroup, QueueSummary

# The claim's queries. Each is pinned to its partial index: the planner, lacking statistics,
# might otherwise pick a range on not_before and sort a million rows.
OLDEST_ELIGIBLE_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_fifo"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY created_at, id LIMIT 1"
)
TOP_PRIORITY_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_priority"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY priority DESC, created_at, id LIMIT 1"
)
OLDEST_OF_RESIDENCY_SQL = (
    SELECT_JOB + " INDEXED BY idx_jobs_queued_residency"
    " WHERE state = 'queued' AND priority = ? AND residency = ? AND not_before <= ?"
    " ORDER BY created_at, id LIMIT 1"
)
CLAIM_QUERIES = (OLDEST_ELIGIBLE_SQL, TOP_PRIORITY_SQL, OLDEST_OF_RESIDENCY_SQL)
"""The queries `choose_next` runs, exposed so tests can check they walk indexes."""


def choose_next(
    conn: sqlite3.Connection, resident: Sequence[str], now: datetime, max_wait: timedelta
) -> Job | None:
    """`scheduler.choose_next` over the stored jobs, as a handful of index seeks."""
    now_us = to_us(now)
    oldest = first_job(conn, OLDEST_ELIGIBLE_SQL, (now_us,))
    if oldest is None:
        return None
    # The oldest eligible job is overdue exactly when any eligible job is.
    if now - oldest.created_at > max_wait:
        return oldest
    top = first_job(conn, TOP_PRIORITY_SQL, (now_us,))
    assert top is not None  # `oldest` is eligible, so some job has a top priority
    for residency in resident:
        if residency == top.residency:
            # `top` is the first come at its priority, so the first of its residency too.
            return top
        warm = first_job(conn, OLDEST_OF_RESIDENCY_SQL, (top.priority, residency, now_us))
        if warm is not None:
            return warm
    return top


def count_queued(conn: sqlite3.Connection, *, up_to: int = -1) -> int:
    """Queued jobs, counting no further than `up_to` (-1: all)."""
    return conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY idx_jobs_state_id"
        " WHERE state = 'queued' LIMIT ?)",
        (up_to,),
    ).fetchone()[0]


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
    ahead = conn.execute(
        "SELECT COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_priority"
        " WHERE state = 'queued' AND priority > ?",
        (job.priority,),
    ).fetchone()[0]
    rank: dict[str, int] = {}
    for index, residency in enumerate(resident):
        rank.setdefault(residency, index)

    def group_key(residency: str) -> tuple[Any, ...]:
        oldest = conn.execute(
            "SELECT created_at, id FROM jobs INDEXED BY idx_jobs_queued_residency"
            " WHERE state = 'queued' AND priority = ? AND residency = ?"
            " ORDER BY created_at, id LIMIT 1",
            (job.priority, residency),
        ).fetchone()
        warm = rank.get(residency)
        return (0, warm, tuple(oldest)) if warm is not None else (1, 0, tuple(oldest))

    own_group = group_key(job.residency)
    groups = conn.execute(
        "SELECT residency, COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_residency"
        " WHERE state = 'queued' AND priority = ? GROUP BY residency",
        (job.priority,),
    ).fetchall()
    for residency, count in groups:
        if residency != job.residency and group_key(residency) < own_group:
            ahead += count
    ahead += conn.execute(
        "SELECT COUNT(*) FROM jobs INDEXED BY idx_jobs_queued_residency"
        " WHERE state = 'queued' AND priority = ? AND residency = ? AND (created_at, id) < (?, ?)",
        (job.priority, job.residency, to_us(job.created_at), job.id),
    ).fetchone()[0]
    return ahead
