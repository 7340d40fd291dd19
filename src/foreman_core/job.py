"""The job: what a queued request is, its states, and the pure transitions between them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from foreman_core.errors import InvalidTransition

CHAT = "chat"
GENERATE = "generate"

DEFAULT_PRIORITY = 0
INTERACTIVE_PRIORITY = 10
"""Priority of sync Ollama-API requests: above async jobs of default priority (ADR 0003)."""

LOAD_OPTIONS = frozenset(
    {"num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mmap", "use_mlock", "num_thread"}
)
"""Ollama options that change how a model is loaded: a different value means a reload."""


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    LOADING = "loading"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the final states, which no transition leaves."""
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
RUNNING_STATES = frozenset({JobState.LOADING, JobState.WORKING})

ALLOWED_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.LOADING, JobState.WORKING, JobState.CANCELLED}),
    JobState.LOADING: frozenset(
        {JobState.WORKING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.WORKING: frozenset(
        {JobState.DONE, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Artifact:
    """A named blob a finished job produced (the completion text, the thinking text, …)."""

    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of GPU work: a chat or generate request waiting for, or done by, the target.

    `payload` is the request body exactly as the client sent it. `model` is normalised (a name
    without a tag means `:latest`); `residency` is the model plus the options that change how
    Ollama loads it, the key the scheduler drains by. `sync` is true when a client waits on the
    HTTP connection (an Ollama-API request) and false for an async `/jobs` submission.
    """

    id: str
    kind: str
    model: str
    residency: str
    payload: bytes
    priority: int
    state: JobState
    sync: bool
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    not_before: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: bytes | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""
    """What a retry with the same idempotency key must match (`submission_fingerprint`); empty
    for a job without a key."""

    @property
    def fifo_key(self) -> tuple[datetime, str]:
        """First come, first served: creation time, then id (ULIDs grow with time)."""
        return (self.created_at, self.id)


def normalize_model(name: str) -> str:
    """`llama3.2`, `Llama3.2` and `llama3.2:latest` are one model (Ollama compares names without
    regard to case); a tag after the last `/` is kept."""
    name = name.strip().lower()
    last_segment = name.rsplit("/", 1)[-1]
    return name if ":" in last_segment else f"{name}:latest"


def residency_key(model: str, options: Mapping[str, Any] | None) -> str:
    """The model plus its load-changing options: `llama3.2:latest`, `qwen3:8b|num_ctx=8192`."""
    normalised = normalize_model(model)
    if not options:
        return normalised
    load = sorted(
        (k, json.dumps(v, sort_keys=True)) for k, v in options.items() if k in LOAD_OPTIONS
    )
    if not load:
        return normalised
    return normalised + "|" + ",".join(f"{k}={v}" for k, v in load)


def submission_fingerprint(
    kind: str, payload: bytes, priority: int, webhook_url: str | None
) -> str:
    """A digest of everything that makes two submissions the same (for Idempotency-Key)."""
    digest = hashlib.sha256()
    for part in (kind.encode(), payload, str(priority).encode(), (webhook_url or "").encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def new_job(
    *,
    job_id: str,
    kind: str,
    model: str,
    payload: bytes,
    now: datetime,
    options: Mapping[str, Any] | None = None,
    priority: int = DEFAULT_PRIORITY,
    sync: bool = False,
    max_attempts: int = 3,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A freshly queued job."""
    return Job(
        id=job_id,
        kind=kind,
        model=normalize_model(model),
        residency=residency_key(model, options),
        payload=payload,
        priority=priority,
        state=JobState.QUEUED,
        sync=sync,
        attempts=0,
        max_attempts=max_attempts,
        created_at=now,
        updated_at=now,
        not_before=now,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        fingerprint=""
        if idempotency_key is None
        else submission_fingerprint(kind, payload, priority, webhook_url),
    )


def _move(job: Job, to: JobState, now: datetime, **changes: Any) -> Job:
    if to not in ALLOWED_TRANSITIONS[job.state]:
        raise InvalidTransition(job.id, job.state, to)
    if to in FINISHED_STATES:
        changes.setdefault("finished_at", now)
    return replace(job, state=to, updated_at=now, **changes)


def claim(job: Job, now: datetime, *, resident: bool) -> Job:
    """Dispatch a queued job: `working` when its residency is loaded, else `loading`."""
    return _move(
        job,
        JobState.WORKING if resident else JobState.LOADING,
        now,
        attempts=job.attempts + 1,
        started_at=now,
        error=None,
    )


def require_fresh_claim(job: Job, claimed: Job) -> None:
    """Raise ValueError unless `claimed` is the claim of `job`, a new job without an
    idempotency key (what `JobStore.add_claimed` stores)."""
    if job.state != JobState.QUEUED or job.attempts != 0 or job.idempotency_key is not None:
        raise ValueError(f"job {job.id}: not a new job without an idempotency key")
    if claimed.id != job.id or claimed.state not in RUNNING_STATES or claimed.attempts != 1:
        raise ValueError(f"job {job.id}: {claimed.state}, attempt {claimed.attempts}, is no claim")


def mark_working(job: Job, now: datetime) -> Job:
    """The model has loaded; the real request is now running."""
    return _move(job, JobState.WORKING, now)


def complete(job: Job, now: datetime, result: bytes | None) -> Job:
    """The target answered in full."""
    return _move(job, JobState.DONE, now, result=result)


def fail(job: Job, now: datetime, error: str) -> Job:
    """The job will not be tried again."""
    return _move(job, JobState.FAILED, now, error=error)


def requeue(job: Job, now: datetime, *, not_before: datetime, error: str) -> Job:
    """Back to the queue after a retryable failure, not to be claimed before `not_before`."""
    return _move(job, JobState.QUEUED, now, not_before=not_before, error=error, started_at=None)


def end_interrupted(job: Job, now: datetime, error: str) -> Job:
    """After a crash, a job left loading or working: back to the queue (the interrupted attempt
    counts), or failed when it is sync (its client has gone) or has used all its attempts."""
    if job.sync or job.attempts >= job.max_attempts:
        return fail(job, now, error)
    return requeue(job, now, not_before=now, error=error)


def cancel(job: Job, now: datetime) -> Job:
    """Stop a job that has not finished; a queued one never runs."""
    return _move(job, JobState.CANCELLED, now)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A job's state transition, as recorded in the webhook outbox (an async job's only).

    The delivered JSON adds the job's `result` and `artifacts` on `done`; they are read from the
    job when the event is sent, so the outbox does not copy them.
    """

    event_id: str
    job_id: str
    model: str
    url: str
    state: JobState
    previous_state: JobState | None
    attempts: int
    timestamp: datetime
    error: str | None


def state_change(previous: Job | None, current: Job, event_id: str) -> StateChange | None:
    """The outbox event for `previous → current` (None → queued at submission), or None when
    nobody asked for webhooks."""
    previous_state = previous.state if previous is not None else None
    if current.webhook_url is None or current.sync or previous_state == current.state:
        return None
    return StateChange(
        event_id=event_id,
        job_id=current.id,
        model=current.model,
        url=current.webhook_url,
        state=current.state,
        previous_state=previous_state,
        attempts=current.attempts,
        timestamp=current.updated_at,
        error=current.error if current.state == JobState.FAILED else None,
    )
