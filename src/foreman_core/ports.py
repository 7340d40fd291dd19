"""The ports: what the core needs from the world, as Protocols the adapters (and, for a sync
job's waiting client, the app) implement.

Every implementation of a port must pass the contract suite for it in `tests/contract/`.
The ports Litestar hands to handlers are runtime-checkable because Litestar validates the
dependencies a handler declares (`store: JobStore`) with `isinstance`, which a plain Protocol
refuses.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol, runtime_checkable

from foreman_core.errors import TargetRejected
from foreman_core.job import Artifact, Job, JobState, StateChange


@runtime_checkable
class Clock(Protocol):
    """Tells the time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


@runtime_checkable
class IdGenerator(Protocol):
    """Makes job and event ids."""

    def new_id(self) -> str:
        """A new 26-character ULID, greater than every id this generator made before."""
        ...


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job listing, newest first; `next_cursor` is None on the last page."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueuedGroup:
    """How many jobs wait for one model at one priority."""

    model: str
    priority: int
    count: int


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """What runs now and what waits."""

    running: list[Job]
    queued: list[QueuedGroup] = field(default_factory=list)
    oldest_queued_at: datetime | None = None

    @property
    def queued_total(self) -> int:
        """All queued jobs."""
        return sum(group.count for group in self.queued)


@runtime_checkable
class JobStore(Protocol):
    """The durable queue: jobs, their artifacts, and (with WebhookOutbox) their webhook events.

    Every method is atomic: it either happens whole or raises and changes nothing. Every write
    that changes the state of a job with a `webhook_url` that is not `sync` appends the event
    `state_change(previous, job, new id)` to the webhook outbox in the same transaction.
    Model names given as filters are normalised (`normalize_model`) by the store.
    """

    def add(self, job: Job, *, max_queued: int | None = None) -> Job:
        """Store a new queued job and return the stored job.

        An async job (`sync=False`) is durable when this returns: it survives power loss.
        With an `idempotency_key` already stored, returns that earlier job when its
        `fingerprint` matches and raises `IdempotencyConflict` when it does not. Raises
        `QueueFull` when `max_queued` is given and that many jobs are already queued.
        """
        ...

    def add_claimed(self, job: Job, claimed: Job) -> Job:
        """Store the new queued job `job` already claimed, as `claimed`; return `claimed`.

        One write for a job dispatched the moment it arrives (ADR 0015), with the webhook
        events of both changes, as `add` and then `claim_next` would have stored it. Raises
        ValueError unless `claimed` is `job`'s claim and `job` has no idempotency key.
        """
        ...

    def get(self, job_id: str) -> Job:
        """The job; raises `JobNotFound`."""
        ...

    def list(
        self,
        *,
        state: JobState | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first (by id: ULIDs grow with time), filtered; `cursor` continues a listing.

        A cursor is the `next_cursor` of the previous page; a malformed one raises ValueError.
        """
        ...

    def claim_next(
        self, *, resident: Sequence[str], now: datetime, max_wait: timedelta
    ) -> Job | None:
        """Dispatch the job `choose_next` picks among the stored jobs, or return None.

        The chosen job goes through `claim(job, now, resident=job.residency in resident)`
        (attempts + 1) and is stored before it is returned. Two claimers never get one job.
        """
        ...

    def save(self, job: Job, *, expected: JobState, artifacts: Sequence[Artifact] = ()) -> Job:
        """Store `job`, a transition of the stored job, if that is still in state `expected`.

        Raises `StaleJob` when the stored job has moved on, `JobNotFound` when it is gone.
        `artifacts` are stored in the same transaction, replacing any of the same name.
        """
        ...

    def save_later(self, job: Job, *, expected: JobState) -> None:
        """`save` the transition soon, without the caller waiting for the write.

        Every later call sees it stored: the store writes it with the next write or before the
        next read, and within a second at most in any case. One whose job has left `expected`
        by then is dropped, as `save` would refuse it. A crash in between loses it. The worker
        records a sync job done this way, once its client has the answer (ADR 0015).
        """
        ...

    def recover_interrupted(self, now: datetime) -> builtins.list[Job]:
        """After a crash: end every job left in loading or working, and return them.

        An async job is requeued (its interrupted attempt counts), or failed when it has used
        all its attempts; a sync job is failed, since its client has gone.
        """
        ...

    def prune_finished(self, before: datetime) -> int:
        """Delete finished jobs that finished before `before`, with their artifacts and events."""
        ...

    def queue_position(self, job_id: str, resident: Sequence[str]) -> int | None:
        """How many queued jobs run before this one (0 = next), or None if it is not queued.

        The order assumed is the scheduler's with nothing new arriving, backoffs and the
        starvation bound ignored: priority descending; within a priority the `resident`
        residencies first (in that order), then the other residencies in order of their oldest
        job; within a residency first come, first served.
        """
        ...

    def count_queued(self) -> int:
        """How many jobs are queued."""
        ...

    def summary(self) -> QueueSummary:
        """The running jobs, queued counts per model and priority, the oldest queued job's age."""
        ...

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest backoff end after `now` among queued jobs (when to look again)."""
        ...

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """One artifact; raises `JobNotFound` or `ArtifactNotFound`."""
        ...

    def list_artifacts(self, job_id: str) -> builtins.list[Artifact]:
        """The job's artifacts, by name."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A webhook event waiting to be delivered."""

    event: StateChange
    delivery_attempts: int
    next_attempt_at: datetime


@runtime_checkable
class WebhookOutbox(Protocol):
    """Webhook events recorded with the transitions that caused them, until they are delivered.

    Events of one job are delivered in the order they were recorded: only the oldest
    undelivered event of a job is ever due.
    """

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[PendingDelivery]:
        """Events to send now: each job's oldest undelivered one, if its time has come."""
        ...

    def mark_delivered(self, event_id: str, now: datetime) -> None:
        """The receiver acknowledged the event."""
        ...

    def mark_failed_attempt(
        self, event_id: str, *, next_attempt_at: datetime | None, error: str
    ) -> None:
        """A delivery failed; try again at `next_attempt_at`, or never (None: abandoned)."""
        ...

    def next_delivery_at(self) -> datetime | None:
        """When the next undelivered event falls due."""
        ...


@runtime_checkable
class TargetResponse(Protocol):
    """A successful (2xx) response of the inference target, being received."""

    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises `TargetBrokeStream` if it fails midway."""
        ...


@runtime_checkable
class InferenceTarget(Protocol):
    """The Ollama host that runs chat and generate requests."""

    def open(self, kind: str, body: bytes) -> AbstractAsyncContextManager[TargetResponse]:
        """Send a `kind` (chat, generate) request with `body` and receive its response.

        Entering raises `TargetUnreachable`, `TargetBusy` or `TargetRejected` before any body
        byte is handed out. Leaving the context early aborts the request at the target.
        """
        ...


class AbortReason(StrEnum):
    """Why the worker ends a sync job's response with an error of foreman's own."""

    CANCELLED = "cancelled"
    """The job was cancelled: by DELETE /jobs/{id}, or because its client went away."""
    SHUTDOWN = "shutdown"
    """foreman stopped before the job could finish."""
    TARGET_FAILED = "target failed"
    """The target failed the request: unreachable or busy past the retries, or broken off."""
    UNSTORED = "unstored"
    """The store would not record the job (ADR 0015)."""
    FAULT = "fault"
    """A fault of foreman's own."""


class WaitingClient(Protocol):
    """The client of a sync job, waiting for the response the worker feeds it as the target
    answers (the app's is `foreman_app.live.LiveResponse`).

    The worker feeds one response: `begin`, any number of `send`s, then `end` or `abort`; or
    `reject` or `abort` alone. It calls nothing once `finished`. A client that has gone away
    may drop what it is fed.
    """

    @property
    def started(self) -> bool:
        """`begin` was called: the body has begun, and a failure can only cut it short."""
        ...

    @property
    def finished(self) -> bool:
        """`end`, `reject` or `abort` was called."""
        ...

    def begin(self, status: int, content_type: str) -> None:
        """The target answered 2xx with `status` and `content_type`; its body follows."""
        ...

    def send(self, chunk: bytes) -> None:
        """The body's next bytes, exactly as the target sent them."""
        ...

    def end(self) -> None:
        """The body is complete."""
        ...

    def reject(self, rejection: TargetRejected) -> None:
        """The target refused the request: its status, body and content type, for the client."""
        ...

    def abort(self, reason: AbortReason, message: str) -> None:
        """The job ended in foreman's error for `reason`, before the body or in the middle."""
        ...


@runtime_checkable
class ModelInventory(Protocol):
    """Which models the target has installed and has loaded, kept fresh by polling."""

    @property
    def degraded(self) -> bool:
        """True while the target is unreachable (the last good inventory is kept)."""
        ...

    def resident(self) -> list[str]:
        """Normalised names of the models loaded on the target, as of the last poll."""
        ...

    async def has_model(self, name: str) -> bool:
        """Whether the model is installed (tag-normalised); a miss triggers one fresh poll."""
        ...

    async def refresh(self) -> None:
        """Poll the target now."""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one webhook request."""

    ok: bool
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None


@runtime_checkable
class WebhookSender(Protocol):
    """Sends one signed webhook request."""

    async def send(self, url: str, event_id: str, body: bytes) -> DeliveryResult:
        """POST `body` to `url`, signed; never raises for a failed delivery."""
        ...
