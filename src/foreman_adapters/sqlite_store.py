"""The durable job store: jobs, artifacts and the webhook outbox in one SQLite file.

Schema and migrations go through sqlite-utils; the hot paths (add, claim, save) are plain SQL on
one connection guarded by a lock. Write transactions are `BEGIN IMMEDIATE`; the `add` of an async
job commits with `synchronous=FULL` (fsynced), every other write with `NORMAL` (ADR 0002).
Timestamps are stored as integer microseconds since the Unix epoch, UTC: they sort as numbers
and round-trip exactly. WAL checkpoints run on a thread of their own, so that writes seldom
pay for one (ADR 0014).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlite_utils import Database

from foreman_core import job as jobs
from foreman_core.clock import is_ulid
from foreman_core.errors import (
    ArtifactNotFound,
    IdempotencyConflict,
    JobNotFound,
    QueueFull,
    StaleJob,
)
from foreman_core.job import Artifact, Job, JobState, StateChange, normalize_model, state_change
from foreman_core.ports import (
    IdGenerator,
    JobPage,
    PendingDelivery,
    QueuedGroup,
    QueueSummary,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
BUSY_TIMEOUT_MS = 5000
CHECKPOINT_INTERVAL = 0.25
"""Seconds between the background copies of the WAL into the database file (ADR 0014)."""

logger = logging.getLogger("foreman.store")

JOB_COLUMNS = (
    "id",
    "kind",
    "model",
    "residency",
    "payload",
    "priority",
    "state",
    "sync",
    "attempts",
    "max_attempts",
    "created_at",
    "updated_at",
    "not_before",
    "started_at",
    "finished_at",
    "error",
    "result",
    "webhook_url",
    "idempotency_key",
    "fingerprint",
)
"""The columns of the `jobs` table, in the order of `job_row`."""

_SELECT_JOB = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"
INSERT_JOB_SQL = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)
"""Inserts one `job_row`."""

# The claim's queries. Each is pinned to its partial index: the planner, lacking statistics,
# might otherwise pick a range on not_before and sort a million rows.
OLDEST_ELIGIBLE_SQL = (
    _SELECT_JOB + " INDEXED BY idx_jobs_queued_fifo"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY created_at, id LIMIT 1"
)
TOP_PRIORITY_SQL = (
    _SELECT_JOB + " INDEXED BY idx_jobs_queued_priority"
    " WHERE state = 'queued' AND not_before <= ? ORDER BY priority DESC, created_at, id LIMIT 1"
)
OLDEST_OF_RESIDENCY_SQL = (
    _SELECT_JOB + " INDEXED BY idx_jobs_queued_residency"
    " WHERE state = 'queued' AND priority = ? AND residency = ? AND not_before <= ?"
    " ORDER BY created_at, id LIMIT 1"
)
CLAIM_QUERIES = (OLDEST_ELIGIBLE_SQL, TOP_PRIORITY_SQL, OLDEST_OF_RESIDENCY_SQL)
"""The queries `claim_next` runs, exposed so tests can check they walk indexes."""

_OUTBOX_COLUMNS = (
    "event_id",
    "job_id",
    "model",
    "url",
    "state",
    "previous_state",
    "attempts",
    "timestamp",
    "error",
    "delivery_attempts",
    "next_attempt_at",
)
_IS_HEAD = (
    "NOT EXISTS (SELECT 1 FROM webhook_outbox AS earlier"
    " WHERE earlier.job_id = o.job_id AND earlier.done = 0 AND earlier.seq < o.seq)"
)


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _to_us_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else _to_us(moment)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _from_us_or_none(value: int | None) -> datetime | None:
    return None if value is None else _from_us(value)


def job_row(job: Job) -> tuple[Any, ...]:
    """The `jobs` row of a job, values in the order of `JOB_COLUMNS`."""
    return (
        job.id,
        job.kind,
        job.model,
        job.residency,
        job.payload,
        job.priority,
        job.state.value,
        int(job.sync),
        job.attempts,
        job.max_attempts,
        _to_us(job.created_at),
        _to_us(job.updated_at),
        _to_us(job.not_before),
        _to_us_or_none(job.started_at),
        _to_us_or_none(job.finished_at),
        job.error,
        job.result,
        job.webhook_url,
        job.idempotency_key,
        job.fingerprint,
    )


def _job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        model=row[2],
        residency=row[3],
        payload=row[4],
        priority=row[5],
        state=JobState(row[6]),
        sync=bool(row[7]),
        attempts=row[8],
        max_attempts=row[9],
        created_at=_from_us(row[10]),
        updated_at=_from_us(row[11]),
        not_before=_from_us(row[12]),
        started_at=_from_us_or_none(row[13]),
        finished_at=_from_us_or_none(row[14]),
        error=row[15],
        result=row[16],
        webhook_url=row[17],
        idempotency_key=row[18],
        fingerprint=row[19],
    )


def _event_from_row(row: Sequence[Any]) -> PendingDelivery:
    event = StateChange(
        event_id=row[0],
        job_id=row[1],
        model=row[2],
        url=row[3],
        state=JobState(row[4]),
        previous_state=None if row[5] is None else JobState(row[5]),
        attempts=row[6],
        timestamp=_from_us(row[7]),
        error=row[8],
    )
    return PendingDelivery(event, delivery_attempts=row[9], next_attempt_at=_from_us(row[10]))


# -- schema ---------------------------------------------------------------------------------


def _create_schema_v1(db: Database) -> None:
    """Jobs, artifacts and the webhook outbox, with the indexes the hot paths walk."""
    db["jobs"].create(
        {
            "id": str,
            "kind": str,
            "model": str,
            "residency": str,
            "payload": bytes,
            "priority": int,
            "state": str,
            "sync": int,
            "attempts": int,
            "max_attempts": int,
            "created_at": int,
            "updated_at": int,
            "not_before": int,
            "started_at": int,
            "finished_at": int,
            "error": str,
            "result": bytes,
            "webhook_url": str,
            "idempotency_key": str,
            "fingerprint": str,
        },
        pk="id",
        not_null=[
            "kind",
            "model",
            "residency",
            "payload",
            "priority",
            "state",
            "sync",
            "attempts",
            "max_attempts",
            "created_at",
            "updated_at",
            "not_before",
            "fingerprint",
        ],
    )
    db["jobs"].create_index(["state", "id"], index_name="idx_jobs_state_id")
    db["jobs"].create_index(["model", "id"], index_name="idx_jobs_model_id")
    # Only queued jobs are scheduled, so the scheduling indexes hold only them.
    for sql in (
        "CREATE INDEX idx_jobs_queued_fifo ON jobs (created_at, id) WHERE state = 'queued'",
        "CREATE INDEX idx_jobs_queued_priority ON jobs (priority DESC, created_at, id)"
        " WHERE state = 'queued'",
        "CREATE INDEX idx_jobs_queued_residency"
        " ON jobs (priority DESC, residency, created_at, id) WHERE state = 'queued'",
        "CREATE INDEX idx_jobs_queued_not_before ON jobs (not_before) WHERE state = 'queued'",
        "CREATE INDEX idx_jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL",
        "CREATE UNIQUE INDEX idx_jobs_idempotency_key ON jobs (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
    ):
        db.execute(sql)
    db["artifacts"].create(
        {"job_id": str, "name": str, "content_type": str, "data": bytes},
        pk=("job_id", "name"),
        not_null=["job_id", "name", "content_type", "data"],
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["webhook_outbox"].create(
        {
            "seq": int,
            "event_id": str,
            "job_id": str,
            "model": str,
            "url": str,
            "state": str,
            "previous_state": str,
            "attempts": int,
            "timestamp": int,
            "error": str,
            "delivery_attempts": int,
            "next_attempt_at": int,
            "done": int,
            "delivered_at": int,
            "last_error": str,
        },
        pk="seq",
        not_null=[
            "event_id",
            "job_id",
            "model",
            "url",
            "state",
            "attempts",
            "timestamp",
            "delivery_attempts",
            "next_attempt_at",
            "done",
        ],
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["webhook_outbox"].create_index(["event_id"], index_name="idx_outbox_event", unique=True)
    # Full, not partial: the foreign key check on deleting a job needs it too.
    db["webhook_outbox"].create_index(["job_id", "seq"], index_name="idx_outbox_job_seq")
    db.execute(
        "CREATE INDEX idx_outbox_due ON webhook_outbox (next_attempt_at, seq) WHERE done = 0"
    )


MIGRATIONS: tuple[Callable[[Database], None], ...] = (_create_schema_v1,)
"""Schema migrations; migration n (1-based) brings `PRAGMA user_version` from n-1 to n."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes."""


# -- the store ------------------------------------------------------------------------------


class SqliteJobStore:
    """Implements JobStore and WebhookOutbox in one SQLite file (WAL, one locked connection)."""

    INTERRUPTED: ClassVar[str] = "interrupted: foreman restarted while the job ran"

    def __init__(
        self,
        path: str | Path,
        ids: IdGenerator,
        *,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self._ids = ids
        self._lock = threading.RLock()
        # Transitions given to save_later, not yet written (ADR 0015).
        self._later: list[tuple[Job, JobState]] = []
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._closed = False
        try:
            self._db = Database(self._conn, execute_plugins=False, recursive_triggers=False)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.enable_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            self._checkpointer = _Checkpointer(str(path), checkpoint_interval, self._tick)
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        while True:
            with self._transaction() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"database schema version {version} is newer than this foreman's "
                        f"({SCHEMA_VERSION})"
                    )
                if version == SCHEMA_VERSION:
                    return
                MIGRATIONS[version](self._db)
                conn.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction under the lock; `durable` commits with an fsync."""
        with self._lock:
            conn = self._conn
            # synchronous cannot change inside a transaction, so it is set around it.
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    pending = self._apply_later(conn)
                    yield conn
                    conn.execute("COMMIT")
                    del self._later[:pending]
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for reads that see every write, pending ones too."""
        with self._lock:
            if self._later:
                with self._transaction():
                    pass
            yield self._conn

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction under the lock: several queries see one state."""
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------

    def save_later(self, job: Job, *, expected: JobState) -> None:
        """Store a transition with the next write, or before the next read, or on the next
        checkpoint tick, whichever comes first (see JobStore.save_later)."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            self._later.append((job, expected))

    def _apply_later(self, conn: sqlite3.Connection) -> int:
        """Write the pending transitions in the transaction under way; how many there were.
        One whose job has moved on meanwhile is left out, as `save` would refuse it."""
        for job, expected in self._later:
            try:
                current = _get(conn, job.id)
            except JobNotFound:
                current = None
            if current is None or current.state != expected:
                logger.info("job %s: no longer %s, so not %s", job.id, expected, job.state)
                continue
            self._update(conn, current, job)
        return len(self._later)

    def _write_later(self) -> None:
        """Write the pending transitions now, if any; a failure leaves them pending."""
        try:
            with self._lock:
                if self._later and not self._closed:
                    with self._transaction():
                        pass
        except sqlite3.Error as exc:
            logger.warning("storing finished jobs failed (retrying): %s", exc)

    def _tick(self) -> None:
        """The checkpoint thread's turn: write what is pending, unless the store is in use
        (whoever uses it writes them)."""
        if self._lock.acquire(blocking=False):
            try:
                self._write_later()
            finally:
                self._lock.release()

    def _record(self, conn: sqlite3.Connection, previous: Job | None, job: Job) -> None:
        """Append the webhook event of `previous → job`, if it makes one."""
        event = state_change(previous, job, self._ids.new_id())
        if event is None:
            return
        conn.execute(
            f"INSERT INTO webhook_outbox ({', '.join(_OUTBOX_COLUMNS)}, done)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0)",
            (
                event.event_id,
                event.job_id,
                event.model,
                event.url,
                event.state.value,
                None if event.previous_state is None else event.previous_state.value,
                event.attempts,
                _to_us(event.timestamp),
                event.error,
                _to_us(event.timestamp),
            ),
        )

    def _update(self, conn: sqlite3.Connection, previous: Job, job: Job) -> Job:
        """Write the columns of `job` that differ from `previous`, and its event."""
        old, new = job_row(previous), job_row(job)
        changed = [i for i in range(1, len(JOB_COLUMNS)) if old[i] != new[i]]
        if changed:
            assignments = ", ".join(f"{JOB_COLUMNS[i]} = ?" for i in changed)
            conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?",
                [new[i] for i in changed] + [job.id],
            )
        self._record(conn, previous, job)
        return job

    def _insert(
        self,
        conn: sqlite3.Connection,
        job: Job,
        max_queued: int | None,
        *,
        claimed: Job | None = None,
    ) -> Job:
        """`add` inside a transaction: the stored job (`job`, or `claimed`, its claim, stored
        in its place) or an idempotent earlier one."""
        if job.idempotency_key is not None:
            row = conn.execute(
                _SELECT_JOB + " WHERE idempotency_key = ?", (job.idempotency_key,)
            ).fetchone()
            if row is not None:
                earlier = _job_from_row(row)
                if earlier.fingerprint != job.fingerprint:
                    raise IdempotencyConflict(job.idempotency_key, earlier.id)
                return earlier
        if max_queued is not None and _count_queued(conn, up_to=max_queued) >= max_queued:
            raise QueueFull(max_queued)
        conn.execute(INSERT_JOB_SQL, job_row(claimed or job))
        self._record(conn, None, job)
        if claimed is None:
            return job
        self._record(conn, job, claimed)
        return claimed

    def add(self, job: Job, *, max_queued: int | None = None) -> Job:
        """Store a new queued job (see JobStore.add); an async one is fsynced."""
        with self._transaction(durable=not job.sync) as conn:
            return self._insert(conn, job, max_queued)

    def add_claimed(self, job: Job, claimed: Job) -> Job:
        """Store a new job already claimed, in one transaction (see JobStore.add_claimed).

        The row is inserted in its running state, so it never enters the scheduling indexes
        (they hold only queued jobs): this costs less than `add` alone.
        """
        jobs.require_fresh_claim(job, claimed)
        with self._transaction(durable=not job.sync) as conn:
            return self._insert(conn, job, None, claimed=claimed)

    def save(self, job: Job, *, expected: JobState, artifacts: Sequence[Artifact] = ()) -> Job:
        """Store a transition of a stored job (see JobStore.save)."""
        with self._transaction() as conn:
            current = _get(conn, job.id)
            if current.state != expected:
                raise StaleJob(job.id, expected, current.state)
            if artifacts:
                conn.executemany(
                    "INSERT INTO artifacts (job_id, name, content_type, data) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (job_id, name) DO UPDATE"
                    " SET content_type = excluded.content_type, data = excluded.data",
                    [(job.id, a.name, a.content_type, a.data) for a in artifacts],
                )
            return self._update(conn, current, job)

    def claim_next(
        self, *, resident: Sequence[str], now: datetime, max_wait: timedelta
    ) -> Job | None:
        """Dispatch the scheduler's choice (see JobStore.claim_next), found by index seeks."""
        with self._transaction() as conn:
            chosen = _choose_next(conn, resident, now, max_wait)
            if chosen is None:
                return None
            claimed = jobs.claim(chosen, now, resident=chosen.residency in resident)
            return self._update(conn, chosen, claimed)

    def recover_interrupted(self, now: datetime) -> list[Job]:
        """End jobs a crash left running (see JobStore.recover_interrupted)."""
        with self._transaction() as conn:
            recovered = []
            for job in _running(conn):
                ended = jobs.end_interrupted(job, now, self.INTERRUPTED)
                recovered.append(self._update(conn, job, ended))
            return recovered

    def prune_finished(self, before: datetime) -> int:
        """Delete jobs finished before `before`, with their artifacts and outbox events."""
        doomed = (
            "SELECT id FROM jobs INDEXED BY idx_jobs_finished_at"
            " WHERE finished_at IS NOT NULL AND finished_at < ?"
            " AND state IN ('done', 'failed', 'cancelled')"
        )
        cutoff = (_to_us(before),)
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM artifacts WHERE job_id IN ({doomed})", cutoff)
            conn.execute(f"DELETE FROM webhook_outbox WHERE job_id IN ({doomed})", cutoff)
            return conn.execute(f"DELETE FROM jobs WHERE id IN ({doomed})", cutoff).rowcount

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job; raises JobNotFound."""
        with self._reading() as conn:
            return _get(conn, job_id)

    def list(
        self,
        *,
        state: JobState | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first by id, filtered, paged by cursor (the last id of the page before)."""
        if cursor is not None and not is_ulid(cursor):
            raise ValueError(f"invalid cursor {cursor!r}")
        conditions, params = [], []
        if state is not None:
            conditions.append("state = ?")
            params.append(JobState(state).value)
        if model:
            conditions.append("model = ?")
            params.append(normalize_model(model))
        if cursor is not None:
            conditions.append("id < ?")
            params.append(cursor)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        # One row beyond the page tells whether another page follows.
        params.append(limit + 1 if limit >= 0 else -1)
        with self._reading() as conn:
            rows = conn.execute(f"{_SELECT_JOB}{where} ORDER BY id DESC LIMIT ?", params).fetchall()
        matches = [_job_from_row(row) for row in rows]
        page = matches[:limit]
        more = len(matches) > limit
        return JobPage(jobs=page, next_cursor=page[-1].id if more and page else None)

    def queue_position(self, job_id: str, resident: Sequence[str]) -> int | None:
        """Position in `queue_order` (0 = next), counted with grouped queries."""
        with self._snapshot() as conn:
            job = _get(conn, job_id)
            if job.state != JobState.QUEUED:
                return None
            return _queue_position(conn, job, resident)

    def count_queued(self) -> int:
        """How many jobs are queued."""
        with self._reading() as conn:
            return _count_queued(conn)

    def summary(self) -> QueueSummary:
        """Running jobs, queued counts per model and priority, the oldest queued job's time."""
        with self._snapshot() as conn:
            groups = conn.execute(
                "SELECT model, priority, COUNT(*) FROM jobs WHERE state = 'queued'"
                " GROUP BY model, priority ORDER BY model, priority"
            ).fetchall()
            oldest = conn.execute(
                "SELECT MIN(created_at) FROM jobs INDEXED BY idx_jobs_queued_fifo"
                " WHERE state = 'queued'"
            ).fetchone()[0]
            return QueueSummary(
                running=_running(conn),
                queued=[QueuedGroup(model, priority, count) for model, priority, count in groups],
                oldest_queued_at=_from_us_or_none(oldest),
            )

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest backoff end after `now` among queued jobs."""
        with self._reading() as conn:
            value = conn.execute(
                "SELECT MIN(not_before) FROM jobs INDEXED BY idx_jobs_queued_not_before"
                " WHERE state = 'queued' AND not_before > ?",
                (_to_us(now),),
            ).fetchone()[0]
        return _from_us_or_none(value)

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """One artifact of a job; raises JobNotFound or ArtifactNotFound."""
        with self._snapshot() as conn:
            _require_job(conn, job_id)
            row = conn.execute(
                "SELECT name, content_type, data FROM artifacts WHERE job_id = ? AND name = ?",
                (job_id, name),
            ).fetchone()
        if row is None:
            raise ArtifactNotFound(job_id, name)
        return Artifact(*row)

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """A job's artifacts by name; raises JobNotFound."""
        with self._snapshot() as conn:
            _require_job(conn, job_id)
            rows = conn.execute(
                "SELECT name, content_type, data FROM artifacts WHERE job_id = ? ORDER BY name",
                (job_id,),
            ).fetchall()
        return [Artifact(*row) for row in rows]

    def close(self) -> None:
        """Write what is pending and close the connection; a second close does nothing."""
        with self._lock:
            if not self._closed:
                self._write_later()
                self._closed = True
                self._checkpointer.stop()
                self._conn.close()  # the last connection to close checkpoints what is left

    # -- webhook outbox -------------------------------------------------------------------

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[PendingDelivery]:
        """Each job's oldest undelivered event whose time has come, soonest first."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_OUTBOX_COLUMNS)} FROM webhook_outbox AS o"
                f" INDEXED BY idx_outbox_due WHERE done = 0 AND next_attempt_at <= ?"
                f" AND {_IS_HEAD} ORDER BY next_attempt_at, seq LIMIT ?",
                (_to_us(now), limit),
            ).fetchall()
        return [_event_from_row(row) for row in rows]

    def mark_delivered(self, event_id: str, now: datetime) -> None:
        """The receiver acknowledged the event; raises KeyError for an unknown event."""
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE webhook_outbox SET delivery_attempts = delivery_attempts + 1,"
                " done = 1, delivered_at = ? WHERE event_id = ?",
                (_to_us(now), event_id),
            ).rowcount
            if not updated:
                raise KeyError(event_id)

    def mark_failed_attempt(
        self, event_id: str, *, next_attempt_at: datetime | None, error: str
    ) -> None:
        """Reschedule a failed delivery, or abandon it (None); raises KeyError if unknown."""
        with self._transaction() as conn:
            if next_attempt_at is None:
                sql = (
                    "UPDATE webhook_outbox SET delivery_attempts = delivery_attempts + 1,"
                    " done = 1, last_error = ? WHERE event_id = ?"
                )
                params: tuple[Any, ...] = (error, event_id)
            else:
                sql = (
                    "UPDATE webhook_outbox SET delivery_attempts = delivery_attempts + 1,"
                    " next_attempt_at = ?, last_error = ? WHERE event_id = ?"
                )
                params = (_to_us(next_attempt_at), error, event_id)
            if not conn.execute(sql, params).rowcount:
                raise KeyError(event_id)

    def next_delivery_at(self) -> datetime | None:
        """When the next undelivered event falls due."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT next_attempt_at FROM webhook_outbox AS o INDEXED BY idx_outbox_due"
                f" WHERE done = 0 AND {_IS_HEAD} ORDER BY next_attempt_at, seq LIMIT 1"
            ).fetchone()
        return None if row is None else _from_us(row[0])


# -- queries on a connection the caller holds ----------------------------------------------


class _Checkpointer:
    """Calls `on_tick` (which writes what save_later left pending, ADR 0015), then copies the
    WAL back into the database file, every `interval` seconds, on a thread and a
    connection of its own, so that the WAL seldom reaches the 1,000 pages at which SQLite
    checkpoints inside a commit, on the event loop. A PASSIVE checkpoint never waits for the
    writer nor makes it wait. SQLite's own checkpoint stays as the bound under a burst of
    writes faster than this (ADR 0014)."""

    def __init__(self, path: str, interval: float, on_tick: Callable[[], None]) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._interval = interval
        self._on_tick = on_tick
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreman-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the checkpoint under way, if any, and close the connection."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        failing = False
        try:
            while not self._stopping.wait(self._interval):
                self._on_tick()
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    if not failing:  # once per run of failures, not four times a second
                        logger.warning("WAL checkpoint failed (retrying): %s", exc)
                    failing = True
                else:
                    failing = False
        finally:
            self._conn.close()


def _get(conn: sqlite3.Connection, job_id: str) -> Job:
    row = conn.execute(_SELECT_JOB + " WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return _job_from_row(row)


def _require_job(conn: sqlite3.Connection, job_id: str) -> None:
    if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
        raise JobNotFound(job_id)


def _running(conn: sqlite3.Connection) -> list[Job]:
    rows = conn.execute(
        _SELECT_JOB + " WHERE state IN ('loading', 'working') ORDER BY id"
    ).fetchall()
    return [_job_from_row(row) for row in rows]


def _count_queued(conn: sqlite3.Connection, *, up_to: int = -1) -> int:
    """Queued jobs, counting no further than `up_to` (-1: all)."""
    return conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY idx_jobs_state_id"
        " WHERE state = 'queued' LIMIT ?)",
        (up_to,),
    ).fetchone()[0]


def _first(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Job | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else _job_from_row(row)


def _choose_next(
    conn: sqlite3.Connection, resident: Sequence[str], now: datetime, max_wait: timedelta
) -> Job | None:
    """`scheduler.choose_next` over the stored jobs, as a handful of index seeks."""
    now_us = _to_us(now)
    oldest = _first(conn, OLDEST_ELIGIBLE_SQL, (now_us,))
    if oldest is None:
        return None
    # The oldest eligible job is overdue exactly when any eligible job is.
    if now - oldest.created_at > max_wait:
        return oldest
    top = _first(conn, TOP_PRIORITY_SQL, (now_us,))
    assert top is not None  # `oldest` is eligible, so some job has a top priority
    for residency in resident:
        if residency == top.residency:
            # `top` is the first come at its priority, so the first of its residency too.
            return top
        warm = _first(conn, OLDEST_OF_RESIDENCY_SQL, (top.priority, residency, now_us))
        if warm is not None:
            return warm
    return top


def _queue_position(conn: sqlite3.Connection, job: Job, resident: Sequence[str]) -> int:
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
        (job.priority, job.residency, _to_us(job.created_at), job.id),
    ).fetchone()[0]
    return ahead
