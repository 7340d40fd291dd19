"""The `jobs` table's row mapping, used by every insert, update and read of a job.

The table has a column for each `Job` field, of the same name. Timestamps are stored as integer
microseconds since the Unix epoch, UTC: they sort as numbers and round-trip exactly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from foreman_core.errors import JobNotFound
from foreman_core.job import Job, JobState, normalize_model

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """A timestamp as stored: integer microseconds since the epoch."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    """A stored timestamp as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


def to_us_or_none(moment: datetime | None) -> int | None:
    """`to_us`, passing None through."""
    return None if moment is None else to_us(moment)


def from_us_or_none(value: int | None) -> datetime | None:
    """`from_us`, passing None through."""
    return None if value is None else from_us(value)


JOB_COLUMNS = tuple(field.name for field in fields(Job))
"""The columns of the `jobs` table, in the order of `job_row`: one for each `Job` field, named
after it and in its order (a new field needs a migration that adds its column)."""

_CONVERSIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "state": (attrgetter("value"), JobState),
    "sync": (int, bool),
    "created_at": (to_us, from_us),
    "updated_at": (to_us, from_us),
    "not_before": (to_us, from_us),
    "started_at": (to_us_or_none, from_us_or_none),
    "finished_at": (to_us_or_none, from_us_or_none),
}
"""(to SQL, from SQL) of the columns whose stored value is not the field's own."""

_field_values = attrgetter(*JOB_COLUMNS)
_converted = [
    (JOB_COLUMNS.index(column), to_sql, from_sql)
    for column, (to_sql, from_sql) in _CONVERSIONS.items()
]

SELECT_JOB = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"
"""Selects whole rows for `job_from_row`; a caller appends the clauses."""

INSERT_JOB_SQL = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)
"""Inserts one `job_row`."""


def job_row(job: Job) -> tuple[Any, ...]:
    """The `jobs` row of a job, values in the order of `JOB_COLUMNS`."""
    row = list(_field_values(job))
    for index, to_sql, _ in _converted:
        row[index] = to_sql(row[index])
    return tuple(row)


def job_from_row(row: Sequence[Any]) -> Job:
    """The job a `SELECT_JOB` row holds."""
    values = list(row)
    for index, _, from_sql in _converted:
        values[index] = from_sql(values[index])
    return Job(*values)  # positional: the columns are the fields, in order


def update_job(conn: sqlite3.Connection, previous: Job, job: Job) -> None:
    """Write the columns of `job` that differ from `previous`, its stored version."""
    old, new = job_row(previous), job_row(job)
    changed = [i for i in range(1, len(JOB_COLUMNS)) if old[i] != new[i]]
    if changed:
        assignments = ", ".join(f"{JOB_COLUMNS[i]} = ?" for i in changed)
        conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",
            [new[i] for i in changed] + [job.id],
        )


def first_job(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Job | None:
    """The first job a `SELECT_JOB` query finds, if any."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else job_from_row(row)


def get_job(conn: sqlite3.Connection, job_id: str) -> Job:
    """The stored job; raises JobNotFound."""
    job = first_job(conn, SELECT_JOB + " WHERE id = ?", (job_id,))
    if job is None:
        raise JobNotFound(job_id)
    return job


def require_job(conn: sqlite3.Connection, job_id: str) -> None:
    """Raise JobNotFound unless the job is stored."""
    if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
        raise JobNotFound(job_id)


def list_jobs(
    conn: sqlite3.Connection,
    *,
    state: JobState | None,
    model: str | None,
    before: str | None,
    limit: int,
) -> list[Job]:
    """Jobs newest first by id, filtered by state and model, with ids below `before` if given;
    at most `limit` (-1: all)."""
    conditions, params = [], []
    if state is not None:
        conditions.append("state = ?")
        params.append(JobState(state).value)
    if model:
        conditions.append("model = ?")
        params.append(normalize_model(model))
    if before is not None:
        conditions.append("id < ?")
        params.append(before)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = conn.execute(f"{SELECT_JOB}{where} ORDER BY id DESC LIMIT ?", [*params, limit])
    return [job_from_row(row) for row in rows.fetchall()]


def running_jobs(conn: sqlite3.Connection) -> list[Job]:
    """The jobs loading or working, by id."""
    rows = conn.execute(
        SELECT_JOB + " WHERE state IN ('loading', 'working') ORDER BY id"
    ).fetchall()
    return [job_from_row(row) for row in rows]
