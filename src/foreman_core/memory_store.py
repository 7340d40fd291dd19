"""A job store in a dict: the fake for tests, and a store for programs that embed the core."""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from foreman_core import job as jobs
from foreman_core.clock import is_ulid
from foreman_core.errors import (
    ArtifactNotFound,
    IdempotencyConflict,
    JobNotFound,
    QueueFull,
    StaleJob,
)
from foreman_core.job import (
    RUNNING_STATES,
    Artifact,
    Job,
    JobState,
    StateChange,
    normalize_model,
    state_change,
)
from foreman_core.ports import (
    IdGenerator,
    JobPage,
    PendingDelivery,
    QueuedGroup,
    QueueSummary,
)
from foreman_core.scheduler import choose_next, queue_order


class _Delivery:
    __slots__ = ("attempts", "done", "event", "next_attempt_at", "seq")

    def __init__(self, event: StateChange, seq: int) -> None:
        self.event = event
        self.seq = seq
        self.attempts = 0
        self.next_attempt_at = event.timestamp
        self.done = False


class InMemoryJobStore:
    """Implements JobStore and WebhookOutbox in memory; nothing survives the process."""

    INTERRUPTED: ClassVar[str] = "interrupted: foreman restarted while the job ran"

    def __init__(self, ids: IdGenerator) -> None:
        self._ids = ids
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._artifacts: dict[str, dict[str, Artifact]] = {}
        self._by_key: dict[str, str] = {}
        self._outbox: list[_Delivery] = []
        self._seq = 0

    # -- writes ---------------------------------------------------------------------------

    def _write(self, previous: Job | None, job: Job) -> Job:
        self._jobs[job.id] = job
        event = state_change(previous, job, self._ids.new_id())
        if event is not None:
            self._seq += 1
            self._outbox.append(_Delivery(event, self._seq))
        return job

    def add(self, job: Job, *, max_queued: int | None = None) -> Job:
        """Store a new queued job (see JobStore.add)."""
        with self._lock:
            if job.idempotency_key is not None and job.idempotency_key in self._by_key:
                earlier = self._jobs[self._by_key[job.idempotency_key]]
                if earlier.fingerprint != job.fingerprint:
                    raise IdempotencyConflict(job.idempotency_key, earlier.id)
                return earlier
            if max_queued is not None and self.count_queued() >= max_queued:
                raise QueueFull(max_queued)
            if job.idempotency_key is not None:
                self._by_key[job.idempotency_key] = job.id
            self._artifacts[job.id] = {}
            return self._write(None, job)

    def add_claimed(self, job: Job, claimed: Job) -> Job:
        """Store a new job already claimed (see JobStore.add_claimed)."""
        jobs.require_fresh_claim(job, claimed)
        with self._lock:
            self._artifacts[job.id] = {}
            self._write(None, job)
            return self._write(job, claimed)

    def save(self, job: Job, *, expected: JobState, artifacts: Sequence[Artifact] = ()) -> Job:
        """Store a transition of a stored job (see JobStore.save)."""
        with self._lock:
            current = self.get(job.id)
            if current.state != expected:
                raise StaleJob(job.id, expected, current.state)
            for artifact in artifacts:
                self._artifacts[job.id][artifact.name] = artifact
            return self._write(current, job)

    def save_later(self, job: Job, *, expected: JobState) -> None:
        """`save` at once, dropping a stale transition (see JobStore.save_later)."""
        with contextlib.suppress(StaleJob, JobNotFound):
            self.save(job, expected=expected)

    def claim_next(
        self, *, resident: Sequence[str], now: datetime, max_wait: timedelta
    ) -> Job | None:
        """Dispatch the scheduler's choice (see JobStore.claim_next)."""
        with self._lock:
            chosen = choose_next(self._queued(), resident, now, max_wait)
            if chosen is None:
                return None
            return self._write(
                chosen, jobs.claim(chosen, now, resident=chosen.residency in resident)
            )

    def recover_interrupted(self, now: datetime) -> list[Job]:
        """End jobs a crash left running (see JobStore.recover_interrupted)."""
        with self._lock:
            recovered = []
            for job in [j for j in self._jobs.values() if j.state in RUNNING_STATES]:
                ended = jobs.end_interrupted(job, now, self.INTERRUPTED)
                recovered.append(self._write(job, ended))
            return recovered

    def prune_finished(self, before: datetime) -> int:
        """Delete jobs finished before `before` with everything they own."""
        with self._lock:
            doomed = {
                j.id
                for j in self._jobs.values()
                if j.state.finished and j.finished_at is not None and j.finished_at < before
            }
            for job_id in doomed:
                job = self._jobs.pop(job_id)
                self._artifacts.pop(job_id, None)
                if job.idempotency_key is not None:
                    self._by_key.pop(job.idempotency_key, None)
            self._outbox = [d for d in self._outbox if d.event.job_id not in doomed]
            return len(doomed)

    # -- reads ----------------------------------------------------------------------------

    def _queued(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.state == JobState.QUEUED]

    def get(self, job_id: str) -> Job:
        """The job; raises JobNotFound."""
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise JobNotFound(job_id) from None

    def list(
        self,
        *,
        state: JobState | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered, paged by cursor."""
        if cursor is not None and not is_ulid(cursor):
            raise ValueError(f"invalid cursor {cursor!r}")
        wanted_model = normalize_model(model) if model else None
        with self._lock:
            matches = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if (state is None or j.state == state)
                    and (wanted_model is None or j.model == wanted_model)
                ),
                key=lambda j: j.id,
                reverse=True,
            )
        if cursor is not None:
            matches = [j for j in matches if j.id < cursor]
        page = matches[:limit]
        more = len(matches) > limit
        return JobPage(jobs=page, next_cursor=page[-1].id if more and page else None)

    def queue_position(self, job_id: str, resident: Sequence[str]) -> int | None:
        """Position in the estimated run order, 0 = next."""
        with self._lock:
            job = self.get(job_id)
            if job.state != JobState.QUEUED:
                return None
            return [j.id for j in queue_order(self._queued(), resident)].index(job_id)

    def count_queued(self) -> int:
        """How many jobs are queued."""
        with self._lock:
            return len(self._queued())

    def summary(self) -> QueueSummary:
        """Running jobs and queued counts per model and priority."""
        with self._lock:
            queued = self._queued()
            counts: dict[tuple[str, int], int] = {}
            for job in queued:
                counts[(job.model, job.priority)] = counts.get((job.model, job.priority), 0) + 1
            return QueueSummary(
                running=[j for j in self._jobs.values() if j.state in RUNNING_STATES],
                queued=[QueuedGroup(m, p, n) for (m, p), n in sorted(counts.items())],
                oldest_queued_at=min((j.created_at for j in queued), default=None),
            )

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest backoff end after `now`."""
        with self._lock:
            return min((j.not_before for j in self._queued() if j.not_before > now), default=None)

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """One artifact of a job."""
        with self._lock:
            self.get(job_id)
            try:
                return self._artifacts[job_id][name]
            except KeyError:
                raise ArtifactNotFound(job_id, name) from None

    def list_artifacts(self, job_id: str) -> builtins.list[Artifact]:
        """A job's artifacts by name."""
        with self._lock:
            self.get(job_id)
            return sorted(self._artifacts[job_id].values(), key=lambda a: a.name)

    def close(self) -> None:
        """Nothing to release."""

    # -- webhook outbox -------------------------------------------------------------------

    def due_deliveries(self, now: datetime, limit: int = 100) -> builtins.list[PendingDelivery]:
        """Each job's oldest undelivered event whose time has come."""
        with self._lock:
            due = sorted(
                (d for d in self._heads() if d.next_attempt_at <= now),
                key=lambda d: (d.next_attempt_at, d.seq),
            )
            return [PendingDelivery(d.event, d.attempts, d.next_attempt_at) for d in due[:limit]]

    def _heads(self) -> builtins.list[_Delivery]:
        """Each job's oldest undelivered event: the only one of a job that may be sent."""
        heads: dict[str, _Delivery] = {}
        for delivery in self._outbox:
            if not delivery.done and delivery.event.job_id not in heads:
                heads[delivery.event.job_id] = delivery
        return list(heads.values())

    def _delivery(self, event_id: str) -> _Delivery:
        for delivery in self._outbox:
            if delivery.event.event_id == event_id:
                return delivery
        raise KeyError(event_id)

    def mark_delivered(self, event_id: str, now: datetime) -> None:
        """The receiver acknowledged the event."""
        with self._lock:
            delivery = self._delivery(event_id)
            delivery.attempts += 1
            delivery.done = True

    def mark_failed_attempt(
        self, event_id: str, *, next_attempt_at: datetime | None, error: str
    ) -> None:
        """Reschedule a failed delivery, or abandon it."""
        with self._lock:
            delivery = self._delivery(event_id)
            delivery.attempts += 1
            if next_attempt_at is None:
                delivery.done = True
            else:
                delivery.next_attempt_at = next_attempt_at

    def next_delivery_at(self) -> datetime | None:
        """When the next undelivered event falls due."""
        with self._lock:
            return min((d.next_attempt_at for d in self._heads()), default=None)
