"""The durable job store: jobs, artifacts and the webhook outbox in one SQLite file.

Schema and migrations go through sqlite-utils (`schema.py`); the hot paths (add, claim, save)
are plain SQL on one connection guarded by a lock. Write transactions are `BEGIN IMMEDIATE`;
the `add` of an async job commits with `synchronous=FULL` (fsynced), every other write with
`NORMAL` (ADR 0002). WAL checkpoints run on a thread of their own, so that writes seldom pay
for one (ADR 0014).
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

from sqlite_utils import Database

from foreman_adapters.sqlite import outbox, queue, schema
from foreman_adapters.sqlite.checkpoint import CHECKPOINT_INTERVAL, Checkpointer
from foreman_adapters.sqlite.rows import (
    INSERT_JOB_SQL,
    SELECT_JOB,
    first_job,
    get_job,
    job_row,
    list_jobs,
    require_job,
    running_jobs,
    to_us,
    update_job,
)
from foreman_core import job as jobs
from foreman_core.clock import is_ulid
from foreman_core.errors import (
    ArtifactNotFound,
    IdempotencyConflict,
    JobNotFound,
    QueueFull,
    StaleJob,
)
from foreman_core.job import Artifact, Job, JobState, state_change
from foreman_core.ports import (
    IdGenerator,
    JobPage,
    PendingDelivery,
    QueueSummary,
)

BUSY_TIMEOUT_MS = 5000

logger = logging.getLogger("foreman.store")


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
            schema.migrate(self._db)
            self._checkpointer = Checkpointer(str(path), checkpoint_interval, self._tick)
        except BaseException:
            self._conn.close()
            raise

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
                current = get_job(conn, job.id)
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
        if event is not None:
            outbox.append(conn, event)

    def _update(self, conn: sqlite3.Connection, previous: Job, job: Job) -> Job:
        """Write the columns of `job` that differ from `previous`, and its event."""
        update_job(conn, previous, job)
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
            earlier = first_job(
                conn, SELECT_JOB + " WHERE idempotency_key = ?", (job.idempotency_key,)
            )
            if earlier is not None:
                if earlier.fingerprint != job.fingerprint:
                    raise IdempotencyConflict(job.idempotency_key, earlier.id)
                return earlier
        if max_queued is not None and queue.count_queued(conn, up_to=max_queued) >= max_queued:
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
            current = get_job(conn, job.id)
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
            chosen = queue.choose_next(conn, resident, now, max_wait)
            if chosen is None:
                return None
            claimed = jobs.claim(chosen, now, resident=chosen.residency in resident)
            return self._update(conn, chosen, claimed)

    def recover_interrupted(self, now: datetime) -> list[Job]:
        """End jobs a crash left running (see JobStore.recover_interrupted)."""
        with self._transaction() as conn:
            recovered = []
            for job in running_jobs(conn):
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
        cutoff = (to_us(before),)
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM artifacts WHERE job_id IN ({doomed})", cutoff)
            conn.execute(f"DELETE FROM webhook_outbox WHERE job_id IN ({doomed})", cutoff)
            return conn.execute(f"DELETE FROM jobs WHERE id IN ({doomed})", cutoff).rowcount

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job; raises JobNotFound."""
        with self._reading() as conn:
            return get_job(conn, job_id)

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
        # One job beyond the page tells whether another page follows.
        beyond = limit + 1 if limit >= 0 else -1
        with self._reading() as conn:
            matches = list_jobs(conn, state=state, model=model, before=cursor, limit=beyond)
        page = matches[:limit]
        more = len(matches) > limit
        return JobPage(jobs=page, next_cursor=page[-1].id if more and page else None)

    def queue_position(self, job_id: str, resident: Sequence[str]) -> int | None:
        """Position in `queue_order` (0 = next), counted with grouped queries."""
        with self._snapshot() as conn:
            job = get_job(conn, job_id)
            if job.state != JobState.QUEUED:
                return None
            return queue.queue_position(conn, job, resident)

    def count_queued(self) -> int:
        """How many jobs are queued."""
        with self._reading() as conn:
            return queue.count_queued(conn)

    def summary(self) -> QueueSummary:
        """Running jobs, queued counts per model and priority, the oldest queued job's time."""
        with self._snapshot() as conn:
            return queue.summary(conn)

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest backoff end after `now` among queued jobs."""
        with self._reading() as conn:
            return queue.next_not_before(conn, now)

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """One artifact of a job; raises JobNotFound or ArtifactNotFound."""
        with self._snapshot() as conn:
            require_job(conn, job_id)
            row = conn.execute(
                "SELECT name, content_type, data FROM artifacts WHERE job_id = ? AND name = ?",
                (job_id, name),
            ).fetchone()
        if row is None:
            raise ArtifactNotFound(job_id, name)
        return Artifact(*row)

    def list_artifacts(self, job_id: str) -> builtins.list[Artifact]:
        """A job's artifacts by name; raises JobNotFound."""
        with self._snapshot() as conn:
            require_job(conn, job_id)
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

    def due_deliveries(self, now: datetime, limit: int = 100) -> builtins.list[PendingDelivery]:
        """Each job's oldest undelivered event whose time has come, soonest first."""
        with self._reading() as conn:
            return outbox.due(conn, now, limit)

    def mark_delivered(self, event_id: str, now: datetime) -> None:
        """The receiver acknowledged the event; raises KeyError for an unknown event."""
        with self._transaction() as conn:
            outbox.mark_delivered(conn, event_id, now)

    def mark_failed_attempt(
        self, event_id: str, *, next_attempt_at: datetime | None, error: str
    ) -> None:
        """Reschedule a failed delivery, or abandon it (None); raises KeyError if unknown."""
        with self._transaction() as conn:
            outbox.mark_failed_attempt(conn, event_id, next_attempt_at, error)

    def next_delivery_at(self) -> datetime | None:
        """When the next undelivered event falls due."""
        with self._reading() as conn:
            return outbox.next_due_at(conn)
