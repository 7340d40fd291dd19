"""How jobs look on the wire: the job object of the job API (docs/api.md), and the queue view."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from foreman_core.artifacts import artifact_views
from foreman_core.job import Artifact, Job
from foreman_core.ports import QueueSummary


def rfc3339(moment: datetime | None) -> str | None:
    """UTC timestamp with microseconds and a `Z`, or None."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_listing_view(job: Job, queue_position: int | None) -> dict[str, Any]:
    """A job in GET /jobs: the job object without `result` and `artifacts` (which can be
    large; GET /jobs/{id} has them), plus `sync`."""
    return {
        "job_id": job.id,
        "kind": job.kind,
        "model": job.model,
        "state": str(job.state),
        "priority": job.priority,
        "attempts": job.attempts,
        "sync": job.sync,
        "queue_position": queue_position,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "error": job.error,
    }


def job_view(
    job: Job, artifacts: list[Artifact], queue_position: int | None, public_url: str
) -> dict[str, Any]:
    """The job object: what GET /jobs/{id} returns."""
    return {
        **job_listing_view(job, queue_position),
        "result": json.loads(job.result) if job.result else None,
        "artifacts": artifact_views(job.id, artifacts, public_url),
    }


def queue_view(summary: QueueSummary, resident: list[str], now: datetime) -> dict[str, Any]:
    """What GET /queue returns: what runs now and what waits."""
    oldest = summary.oldest_queued_at
    return {
        "resident": resident,
        "running": job_listing_view(summary.running[0], None) if summary.running else None,
        "queued": [
            {"model": group.model, "priority": group.priority, "count": group.count}
            for group in summary.queued
        ],
        "queued_total": summary.queued_total,
        "oldest_queued_at": rfc3339(oldest),
        "oldest_queued_age_seconds": None if oldest is None else (now - oldest).total_seconds(),
    }
