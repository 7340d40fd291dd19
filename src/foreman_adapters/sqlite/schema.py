"""The schema of the store's file and its migrations, counted in `PRAGMA user_version`.

A migration is a record of what one version added: it is never edited once released, so that a
file of any earlier version upgrades to the same schema a new file gets. Tables and indexes are
made with sqlite-utils.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database


def _create_schema_v1(db: Database) -> None:
    """Jobs, artifacts and the webhook outbox, with the indexes the hot paths walk."""
    db.table("jobs").create(
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
    db.table("jobs").create_index(["state", "id"], index_name="idx_jobs_state_id")
    db.table("jobs").create_index(["model", "id"], index_name="idx_jobs_model_id")
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
    db.table("artifacts").create(
        {"job_id": str, "name": str, "content_type": str, "data": bytes},
        pk=("job_id", "name"),
        not_null=["job_id", "name", "content_type", "data"],
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db.table("webhook_outbox").create(
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
    db.table("webhook_outbox").create_index(
        ["event_id"], index_name="idx_outbox_event", unique=True
    )
    # Full, not partial: the foreign key check on deleting a job needs it too.
    db.table("webhook_outbox").create_index(["job_id", "seq"], index_name="idx_outbox_job_seq")
    db.execute(
        "CREATE INDEX idx_outbox_due ON webhook_outbox (next_attempt_at, seq) WHERE done = 0"
    )


MIGRATIONS: tuple[Callable[[Database], None], ...] = (_create_schema_v1,)
"""Schema migrations; migration n (1-based) brings `PRAGMA user_version` from n-1 to n."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes."""


def migrate(db: Database) -> None:
    """Bring the file's schema to SCHEMA_VERSION, one migration per transaction; raises
    RuntimeError for a schema newer than this code."""
    conn = db.conn
    while True:
        with conn:  # commits what the block did, or rolls it back
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {version} is newer than this foreman's "
                    f"({SCHEMA_VERSION})"
                )
            if version == SCHEMA_VERSION:
                return
            MIGRATIONS[version](db)
            conn.execute(f"PRAGMA user_version = {version + 1}")
