"""One attempt of a claimed job, and what becomes of the job and its client however it ends.

The attempt loads the model first when the job was claimed `loading` (ADR 0004), sends the
request, and relays the answer to the waiting client (sync job) or keeps it (async job). A
target failure goes through the retry policy: requeued with a backoff, or failed. When the
worker cuts an attempt short (`Interruption`), `Attempts.settle` puts the job in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from foreman_core import job as jobs
from foreman_core.errors import TargetError, TargetRejected, TargetUnreachable
from foreman_core.job import Artifact, Job, JobState
from foreman_core.lull import WorkerLull
from foreman_core.payloads import load_body, result_artifacts, target_body
from foreman_core.ports import AbortReason, Clock, InferenceTarget, WaitingClient
from foreman_core.retry import RetryLater, RetryPolicy
from foreman_core.worker.health import TargetHealth
from foreman_core.worker.records import STOPPED_MESSAGE, UNSTORED_MESSAGE, JobRecords, Unstored

CANCELLED_MESSAGE = "job cancelled"
NO_RESPONSE_MESSAGE = "the job ended without a response"


class Interruption(StrEnum):
    """Why the worker cut a running attempt short."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    TARGET_GONE = "target gone"
    UNSTORED = "unstored"


@dataclass(slots=True)
class Run:
    """The job in flight: the worker's latest copy of it, its waiting client, its task."""

    job: Job
    client: WaitingClient | None
    started_at: datetime
    task: asyncio.Task[None] | None = None
    interrupted: Interruption | None = None
    """Why the worker cut the attempt short (None: it did not); the first reason stands."""
    last_byte_at: datetime | None = None
    """When the target last sent anything for this job (None: nothing yet)."""

    def interrupt(self, reason: Interruption) -> None:
        """Cut the attempt short: its request leaves the target, and `settle` sees why."""
        if self.interrupted is None:
            self.interrupted = reason
        if self.task is not None:
            self.task.cancel()

    async def ended(self, timeout: float | None = None) -> bool:
        """Whether the attempt's task has ended, waiting up to `timeout` seconds for it."""
        assert self.task is not None
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)


def abort(client: WaitingClient | None, reason: AbortReason, message: str) -> None:
    """End the client's response in foreman's error, unless there is none or it has ended."""
    if client is not None and not client.finished:
        client.abort(reason, message)


class Attempts:
    """Runs the attempt of each job the worker starts, and ends it: done, retried, failed, or
    put in order after an interruption. Keeps what attempts teach: the residency used last
    and how long recent jobs took."""

    RECENT_DURATIONS = 20

    def __init__(
        self,
        *,
        target: InferenceTarget,
        clock: Clock,
        policy: RetryPolicy,
        lull: WorkerLull,
        records: JobRecords,
        health: TargetHealth,
        log: logging.Logger,
    ) -> None:
        self._target = target
        self._clock = clock
        self._policy = policy
        self._lull = lull
        self._records = records
        self._health = health
        self._log = log
        self.last_residency: str | None = None
        """The residency of the last request the target accepted: that model is loaded."""
        self._durations: deque[float] = deque(maxlen=self.RECENT_DURATIONS)

    def start(self, job: Job, client: WaitingClient | None) -> Run:
        """Start the attempt of the claimed `job` in a task of its own; the running job."""
        run = Run(job=job, client=client, started_at=job.started_at or self._clock.now())
        run.task = asyncio.create_task(self._attempt(run), name=f"foreman-job-{job.id}")
        return run

    def estimated_wait(self, queued: int) -> float:
        """Seconds until `queued` more jobs have run (for Retry-After), at least 1."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1.0, queued * mean)

    async def _attempt(self, run: Run) -> None:
        """Load if needed, then run the request; every outcome but an interruption and a job
        the store refused (`Unstored`) is handled here, those two by `settle`."""
        try:
            if run.job.state == JobState.LOADING:
                await self._load(run)
                working = self._records.save(
                    jobs.mark_working(run.job, self._clock.now()), expected=JobState.LOADING
                )
                if working is None:
                    return
                run.job = working
            if run.client is not None:
                await self._relay(run, run.client)
            else:
                await self._collect(run)
        except Unstored:
            raise
        except TargetError as error:
            self._after_target_error(run, error)
        except Exception as error:
            self._log.exception("job %s: unexpected error", run.job.id)
            self._give_up(run, str(error) or type(error).__name__, AbortReason.FAULT)

    async def _load(self, run: Run) -> None:
        with self._lull.waiting_on_target():
            async with self._target.open(jobs.CHAT, load_body(run.job)) as response:
                async for _ in response.chunks():
                    run.last_byte_at = self._clock.now()
        self.last_residency = run.job.residency

    async def _relay(self, run: Run, client: WaitingClient) -> None:
        with self._lull.waiting_on_target():
            async with self._target.open(run.job.kind, target_body(run.job)) as response:
                self.last_residency = run.job.residency
                client.begin(response.status, response.content_type)
                async for chunk in response.chunks():
                    run.last_byte_at = self._clock.now()
                    client.send(chunk)
        self._records.store_new()
        client.end()
        # The handler sends the answer before the job's bookkeeping is done (ADR 0016).
        asyncio.get_running_loop().call_soon(
            self._record_done, run.job, self._clock.now(), run.started_at
        )

    def _record_done(self, job: Job, now: datetime, started_at: datetime) -> None:
        """A sync job's bookkeeping once its client has the answer: its duration, and `done`,
        which the store writes with its next write (ADR 0015)."""
        self._durations.append((now - started_at).total_seconds())
        try:
            self._records.save_later(jobs.complete(job, now, None), expected=job.state)
        except Exception:
            self._log.exception("job %s: could not record it done", job.id)

    async def _collect(self, run: Run) -> None:
        with self._lull.waiting_on_target():
            async with self._target.open(run.job.kind, target_body(run.job)) as response:
                self.last_residency = run.job.residency
                parts = []
                async for chunk in response.chunks():
                    run.last_byte_at = self._clock.now()
                    parts.append(chunk)
                body = b"".join(parts)
        artifacts = result_artifacts(run.job.kind, json.loads(body))
        self._finish(run, result=body, artifacts=artifacts)

    def _finish(self, run: Run, result: bytes, artifacts: Sequence[Artifact]) -> None:
        now = self._clock.now()
        done = self._records.save(
            jobs.complete(run.job, now, result), expected=run.job.state, artifacts=artifacts
        )
        if done is not None:
            self._durations.append((now - run.started_at).total_seconds())

    def _after_target_error(self, run: Run, error: TargetError) -> None:
        if isinstance(error, TargetUnreachable):
            self._health.doubt()
        if run.client is not None and run.client.started:
            self._give_up(run, str(error) or type(error).__name__, AbortReason.TARGET_FAILED)
            return
        now = self._clock.now()
        decision = self._policy.decide(run.job, error, now)
        if isinstance(decision, RetryLater):
            requeued = jobs.requeue(
                run.job, now, not_before=decision.not_before, error=decision.error
            )
            if self._records.save(requeued, expected=run.job.state) is not None:
                self._log.info(
                    "job %s: attempt %d failed (%s); retrying at %s",
                    run.job.id,
                    run.job.attempts,
                    decision.error,
                    decision.not_before.isoformat(),
                )
            return
        self._log.warning("job %s: failed: %s", run.job.id, decision.error)
        self._records.save(jobs.fail(run.job, now, decision.error), expected=run.job.state)
        client = run.client
        if client is None or client.finished:
            return
        if isinstance(error, TargetRejected):
            client.reject(error)
        else:
            client.abort(AbortReason.TARGET_FAILED, decision.error)

    def _give_up(self, run: Run, message: str, reason: AbortReason) -> None:
        try:
            self._records.save(
                jobs.fail(run.job, self._clock.now(), message), expected=run.job.state
            )
        except Exception:
            self._log.exception("job %s: could not record its failure", run.job.id)
        abort(run.client, reason, message)

    def settle(self, run: Run) -> None:
        """After the attempt's task: put an interrupted job in order and release its client."""
        task = run.task
        assert task is not None
        died = None if task.cancelled() else task.exception()
        unstored = run.interrupted == Interruption.UNSTORED or isinstance(died, Unstored)
        if died is not None and not unstored:
            self._log.error("job %s: task died", run.job.id, exc_info=died)
        if unstored:
            abort(run.client, AbortReason.UNSTORED, UNSTORED_MESSAGE)
        elif run.interrupted == Interruption.CANCELLED:
            abort(run.client, AbortReason.CANCELLED, CANCELLED_MESSAGE)
        elif run.interrupted == Interruption.TARGET_GONE:
            grace = self._health.grace.total_seconds()
            self._log.warning(
                "job %s: Ollama sent nothing for %gs and is unreachable", run.job.id, grace
            )
            self._after_target_error(
                run, TargetUnreachable(f"Ollama stopped answering (nothing for {grace:g}s)")
            )
        elif task.cancelled() or run.interrupted == Interruption.SHUTDOWN:
            self._records.end_stopped(run.job.id)
            abort(run.client, AbortReason.SHUTDOWN, STOPPED_MESSAGE)
        client = run.client
        if client is not None and not client.finished and not self._records.is_queued(run.job.id):
            client.abort(AbortReason.FAULT, NO_RESPONSE_MESSAGE)
        self._records.mend(only=run.job.id)
