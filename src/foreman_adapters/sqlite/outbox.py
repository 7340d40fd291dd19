"""The webhook outbox table: a state change's event is written in the transaction of the change
and delivered from here, in order per job (ADR 0006).

Each function runs on a connection the caller holds, inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from foreman_adapters.sqlite.rows import from_us, to_us
from foreman_core.job import JobState, StateChange
from foreman_core.ports import PendingDelivery

_COLUMNS = (
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
"""The columns `_event_row` fills and `_delivery_from_row` reads, in their order."""

# An event is due only once every earlier event of its job is done: deliveries stay in order.
_IS_HEAD = (
    "NOT EXISTS (SELECT 1 FROM webhook_outbox AS earlier"
    " WHERE earlier.job_id = o.job_id AND earlier.done = 0 AND earlier.seq < o.seq)"
)


def _event_row(event: StateChange) -> tuple[Any, ...]:
    """A new event's row, values in the order of `_COLUMNS`: not yet tried, due at once."""
    return (
        event.event_id,
        event.job_id,
        event.model,
        event.url,
        event.state.value,
        None if event.previous_state is None else event.previous_state.value,
        event.attempts,
        to_us(event.timestamp),
        event.error,
        0,
        to_us(event.timestamp),
    )


def _delivery_from_row(row: Sequence[Any]) -> PendingDelivery:
    event = StateChange(
        event_id=row[0],
        job_id=row[1],
        model=row[2],
        url=row[3],
        state=JobState(row[4]),
        previous_state=None if row[5] is None else JobState(row[5]),
        attempts=row[6],
        timestamp=from_us(row[7]),
        error=row[8],
    )
    return PendingDelivery(event, delivery_attempts=row[9], next_attempt_at=from_us(row[10]))


def append(conn: sqlite3.Connection, event: StateChange) -> None:
    """Store a new event, undelivered."""
    conn.execute(
        f"INSERT INTO webhook_outbox ({', '.join(_COLUMNS)}, done)"
        f" VALUES ({', '.join('?' * len(_COLUMNS))}, 0)",
        _event_row(event),
    )


def due(conn: sqlite3.Connection, now: datetime, limit: int) -> list[PendingDelivery]:
    """Each job's oldest undelivered event whose time has come, soonest first."""
    rows = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM webhook_outbox AS o"
        f" INDEXED BY idx_outbox_due WHERE done = 0 AND next_attempt_at <= ?"
        f" AND {_IS_HEAD} ORDER BY next_attempt_at, seq LIMIT ?",
        (to_us(now), limit),
    ).fetchall()
    return [_delivery_from_row(row) for row in rows]


def next_due_at(conn: sqlite3.Connection) -> datetime | None:
    """When the next undelivered event falls due."""
    row = conn.execute(
        "SELECT next_attempt_at FROM webhook_outbox AS o INDEXED BY idx_outbox_due"
        f" WHERE done = 0 AND {_IS_HEAD} ORDER BY next_attempt_at, seq LIMIT 1"
    ).fetchone()
    return None if row is None else from_us(row[0])


def mark_delivered(conn: sqlite3.Connection, event_id: str, now: datetime) -> None:
    """The receiver acknowledged the event; raises KeyError for an unknown event."""
    updated = conn.execute(
        "UPDATE webhook_outbox SET delivery_attempts = delivery_attempts + 1,"
        " done = 1, delivered_at = ? WHERE event_id = ?",
        (to_us(now), event_id),
    ).rowcount
    if not updated:
        raise KeyError(event_id)


def mark_failed_attempt(
    conn: sqlite3.Connection, event_id: str, next_attempt_at: datetime | None, error: str
) -> None:
    """Reschedule a failed delivery, or abandon it (None); raises KeyError if unknown."""
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
        params = (to_us(next_attempt_at), error, event_id)
    if not conn.execute(sql, params).rowcount:
        raise KeyError(event_id)
