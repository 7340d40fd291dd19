"""The worker: the single loop that runs chat and generate jobs on the target, one at a time.

It claims the scheduler's choice from the store, makes the model resident when it believes it
is not (ADR 0004), sends the request and relays (sync job) or keeps (async job) the answer, and
turns target failures into retries or failures through the retry policy. A sync job's HTTP
handler waits on the job's `LiveResponse`, which the worker feeds as the target answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from foreman_core import job as jobs
from foreman_core.errors import (
    JobNotFound,
    QueueFull,
    StaleJob,
    TargetError,
    TargetRejected,
    TargetUnreachable,
)
from foreman_core.job import RUNNING_STATES, Artifact, Job, JobState, normalize_model
from foreman_core.lull import WorkerLull
from foreman_core.payloads import load_body, result_artifacts, target_body
from foreman_core.ports import Clock, InferenceTarget, JobStore, ModelInventory
from foreman_core.retry import RetryLater, RetryPolicy

JSON = "application/json; charset=utf-8"

CANCELLED_STATUS = 409
"""What a watched sync job's handler answers when the job is cancelled before its body began."""

SHUTDOWN_STATUS = 503
"""What a watched sync job's handler answers when foreman stops before its job could finish."""

STOPPED_MESSAGE = "interrupted: foreman stopped while the job ran"
SHUTTING_DOWN_MESSAGE = "foreman is shutting down"
CANCELLED_MESSAGE = "job cancelled"
UNRECORDED_MESSAGE = "interrupted: the job store would not record how the job ended"
UNSTORED_MESSAGE = "the job store would not record the job"
TARGET_GONE_GRACE = timedelta(seconds=30)
"""How long the target may send nothing for the running job while it also fails the
inventory's polls, before the job's request is given up as unreachable (ADR 0012)."""


def error_body(message: str) -> bytes:
    """Ollama's error shape, `{"error":"<message>"}`, compact as Ollama writes it."""
    return json.dumps({"error": message}, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """The target answered 2xx: relay a body with this status and content type."""

    status: int
    content_type: str


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """The job ended before any body byte: answer with exactly this.

    `status` is the target's for `TargetRejected` (with its body and content type unchanged);
    502 when retries ran out or the failure was final; 409 when the job was cancelled; 503 when
    foreman stopped; 500 for a fault of foreman's own. Foreman's bodies are `{"error":"…"}`.
    """

    status: int
    body: bytes
    content_type: str


class LiveResponse:
    """One sync job's response, handed from the worker to the HTTP handler that waits for it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._outcome: ResponseStarted | ResponseFailed | None = None
        self._decided = asyncio.Event()
        self._finished = asyncio.Event()
        # Unbounded on purpose: a slow client must never hold the GPU; responses are text.
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ended = False
        self._abandoned = False

    @property
    def started(self) -> bool:
        """True once the body began: a failure from now on can only end the stream."""
        return isinstance(self._outcome, ResponseStarted)

    @property
    def finished(self) -> bool:
        """True once the last byte (or the failure) has been handed over."""
        return self._ended

    async def start(self) -> ResponseStarted | ResponseFailed:
        """Wait until the target has answered (headers) or the job ended without a body."""
        await self._decided.wait()
        assert self._outcome is not None
        return self._outcome

    async def complete(self) -> tuple[ResponseStarted | ResponseFailed, bytes]:
        """Wait for the whole response: how it began (or failed), and the body, if it began."""
        await self._finished.wait()
        assert self._outcome is not None
        parts = []
        while not self._chunks.empty():
            chunk = self._chunks.get_nowait()
            if chunk is None:
                self._chunks.put_nowait(None)  # a second reader sees the end too
                break
            parts.append(chunk)
        return self._outcome, b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the target sends it, each chunk the moment it arrives.

        Empty unless `start()` gave `ResponseStarted`. A failure after the first byte ends the
        body with one line `{"error":"…"}\\n`, as Ollama does.
        """
        await self._decided.wait()
        if not self.started:
            return
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                self._chunks.put_nowait(None)  # a second reader sees the end too
                return
            yield chunk

    # -- fed by the worker -----------------------------------------------------------------

    def _begin(self, started: ResponseStarted) -> None:
        if self._decided.is_set():
            return
        self._outcome = started
        self._decided.set()

    def _send(self, chunk: bytes) -> None:
        if not self._abandoned and not self._ended:
            self._chunks.put_nowait(chunk)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._chunks.put_nowait(None)
            self._finished.set()

    def _refuse(self, failed: ResponseFailed) -> None:
        """End before the body with `failed`; ignored once the body began or ended."""
        if self._decided.is_set():
            return
        self._outcome = failed
        self._ended = True
        self._decided.set()
        self._finished.set()

    def _abort(self, status: int, message: str) -> None:
        """End with foreman's error: a JSON error before the body, an error line after it."""
        if self._ended:
            return
        if self.started:
            self._send(error_body(message) + b"\n")
            self._end()
        else:
            self._refuse(ResponseFailed(status, error_body(message), JSON))

    def _abandon(self) -> None:
        self._abandoned = True
        while not self._chunks.empty():
            self._chunks.get_nowait()


class _Unstored(Exception):
    """The store would not record a job the worker had started before storing it."""


class _Abort(StrEnum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    TARGET_GONE = "target gone"
    UNSTORED = "unstored"


@dataclass(slots=True)
class _Run:
    """The job in flight: the worker's latest copy of it, its waiting client, its task."""

    job: Job
    live: LiveResponse | None
    started_at: datetime
    task: asyncio.Task[None] | None = None
    abort_reason: _Abort | None = None
    last_byte_at: datetime | None = None
    """When the target last sent anything for this job (None: nothing yet)."""
    unstored: Job | None = None
    """The new job as it arrived, while the store has yet to record it (ADR 0015)."""

    def abort(self, reason: _Abort) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        if self.task is not None:
            self.task.cancel()

    async def ended(self, timeout: float | None = None) -> bool:
        assert self.task is not None
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)


class Worker:
    """Runs queued chat/generate jobs one at a time: at most one request in flight at the target.

    The handler of a sync request calls `watch()` before it adds the job and `forget()` when it
    is done; `cancel()` serves both DELETE /jobs/{id} and a client that went away.
    """

    RECENT_DURATIONS = 20

    def __init__(
        self,
        *,
        store: JobStore,
        target: InferenceTarget,
        inventory: ModelInventory,
        clock: Clock,
        policy: RetryPolicy,
        max_wait: timedelta,
        logger: logging.Logger | None = None,
        idle_recheck: float = 1.0,
        on_transition: Callable[[], None] | None = None,
        lull: WorkerLull | None = None,
        target_gone_grace: timedelta = TARGET_GONE_GRACE,
        running_recheck: float = 1.0,
    ) -> None:
        self._store = store
        self._target = target
        self._inventory = inventory
        self._clock = clock
        self._policy = policy
        self._max_wait = max_wait
        self._log = logger or logging.getLogger("foreman.worker")
        # A safety net only: every change that matters calls wake(), and backoffs are timed.
        self._idle_recheck = idle_recheck
        # Called after every state change the worker stores that makes a webhook event (the
        # webhook dispatcher's wake).
        self._on_transition = on_transition or (lambda: None)
        # Tells work sharing the loop (webhook deliveries) when the worker does not need it.
        self._lull = lull or WorkerLull()
        self._live: dict[str, LiveResponse] = {}
        self._wakeup = asyncio.Event()
        self._running: _Run | None = None
        # True while the loop waits between jobs: enqueue() may start a job itself (ADR 0015).
        self._at_rest = False
        # True from a claim that found no eligible job until work is added or requeued (or the
        # idle wait times out): the queue then holds nothing a new job would wait behind.
        self._nothing_eligible = False
        # When the earliest backoff of a queued job ends (None: no job is in backoff).
        self._backoff_ends: datetime | None = None
        self._recent: str | None = None
        self._durations: deque[float] = deque(maxlen=self.RECENT_DURATIONS)
        self._stopping = False
        self._looping = False
        self._loop_exited = asyncio.Event()
        # Set when an attempt found the target unreachable: look again before the next claim.
        self._target_in_doubt = False
        self._target_down = False
        # Watching the running job for a target that stopped answering (ADR 0012).
        self._target_gone_grace = target_gone_grace
        self._running_recheck = running_recheck
        self._unanswered_since: datetime | None = None
        # Jobs whose transition the store refused (locked, disk full): once their run is over,
        # ended as a crash would end them, before anything else is claimed.
        self._unrecorded: set[str] = set()

    # -- the handlers' side ----------------------------------------------------------------

    def watch(self, job_id: str) -> LiveResponse:
        """The response of the sync job `job_id`; call it before the job is added to the store."""
        live = LiveResponse(job_id)
        self._live[job_id] = live
        return live

    def forget(self, job_id: str) -> None:
        """The handler is done with the job's response (it finished, or its client left)."""
        live = self._live.pop(job_id, None)
        if live is not None:
            live._abandon()

    def wake(self) -> None:
        """Work arrived: look for a job to dispatch now."""
        self._nothing_eligible = False
        self._wakeup.set()

    def enqueue(self, job: Job, *, max_queued: int | None) -> Job:
        """Add a new job to the store and dispatch it when its turn comes; the stored job.

        A full queue raises `QueueFull` carrying when to come back: about one job's duration,
        when a slot frees up. The store's other errors (e.g. `IdempotencyConflict`) pass through.
        A sync job that arrives while the loop rests, with no queued job that could go before
        it, is started at once instead, and stored as its request goes to the target (ADR 0015).
        """
        if job.sync and self._can_start_at_once():
            self._lull.busy()
            stored = self._run_now(job)
            self._wakeup.set()  # the loop watches the job from here
            return stored
        try:
            stored = self._store.add(job, max_queued=max_queued)
        except QueueFull as full:
            raise QueueFull(full.limit, self.estimated_wait(1)) from None
        self.wake()
        return stored

    def _can_start_at_once(self) -> bool:
        """Whether the loop rests between jobs and no queued job could go before a new one:
        the last claim found none eligible, nothing was added or requeued since, and no backoff
        has ended meanwhile."""
        return (
            self._at_rest
            and self._running is None
            and self._nothing_eligible
            and (self._backoff_ends is None or self._clock.now() < self._backoff_ends)
            and self._looping
            and not self._stopping
            and not self._unrecorded
            and not self._target_in_doubt
            and not self._inventory.degraded
        )

    def _run_now(self, job: Job) -> Job:
        """Claim the new `job` without the store and start it; the store records it claimed
        right after the attempt's first step, which sends the request, so that the write
        overlaps the target's work instead of delaying the request (or before the attempt's
        first write, should it end in its first step). The claimed job."""
        claimed = jobs.claim(job, self._clock.now(), resident=job.residency in self.resident)
        run = self._start(claimed)
        run.unstored = job
        asyncio.get_running_loop().call_soon(self._store_or_abort, run)
        return claimed

    def _store_or_abort(self, run: _Run) -> None:
        try:
            self._store_if_new(run)
        except _Unstored:
            run.abort(_Abort.UNSTORED)

    def _store_if_new(self, run: _Run) -> None:
        """Store the job of `run` if it was started before it was stored; `_Unstored` if the
        store refuses it."""
        job, run.unstored = run.unstored, None
        if job is None:
            return
        try:
            self._store.add_claimed(job, run.job)
        except Exception as error:
            self._log.exception("job %s: the store refused the job; aborting it", job.id)
            raise _Unstored(UNSTORED_MESSAGE) from error
        self._transitioned(run.job)

    def enqueue_live(self, job: Job, *, max_queued: int | None) -> LiveResponse:
        """`enqueue` a sync job and return the response the worker will feed as it runs."""
        live = self.watch(job.id)
        try:
            self.enqueue(job, max_queued=max_queued)
        except BaseException:
            self.forget(job.id)  # never stored: nobody will feed this response
            raise
        return live

    async def cancel(self, job_id: str) -> Job:
        """Cancel the job: a queued one never runs, a running one's target request is aborted.

        Returns the cancelled job once its request (if any) has left the target. Raises
        `InvalidTransition` when the job has finished and `JobNotFound` when there is none.
        """
        while True:
            job = self._store.get(job_id)
            try:
                cancelled = self._store.save(
                    jobs.cancel(job, self._clock.now()), expected=job.state
                )
                break
            except StaleJob:
                continue  # the worker moved it meanwhile: look again
        self._transitioned(cancelled)
        run = self._running
        if job.state in RUNNING_STATES and run is not None and run.job.id == job_id:
            run.abort(_Abort.CANCELLED)
            await run.ended()
        live = self._live.get(job_id)
        if live is not None:
            live._abort(CANCELLED_STATUS, CANCELLED_MESSAGE)
        return cancelled

    @property
    def running_job_id(self) -> str | None:
        """The job being dispatched now, if any."""
        return self._running.job.id if self._running is not None else None

    @property
    def resident(self) -> list[str]:
        """Residencies believed loaded, most recently used first.

        The one this worker used last, then the inventory's loaded models. A bare model name
        from /api/ps is left out when the worker loaded that model with other load options:
        Ollama keeps one instance per model, so that instance is the worker's.
        """
        names: list[str] = []
        loaded_model = None
        if self._recent is not None:
            names.append(self._recent)
            loaded_model = self._recent.split("|", 1)[0]
        for name in self._inventory.resident():
            model = normalize_model(name)
            if model not in names and model != loaded_model:
                names.append(model)
        return names

    def estimated_wait(self, queued: int) -> float:
        """Seconds until `queued` more jobs have run (for Retry-After), at least 1."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1.0, queued * mean)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch jobs until `stop()`; no failure of a job or of the store ends the loop."""
        self._looping = True
        self._loop_exited.clear()
        try:
            self._recover()
            while not self._stopping:
                try:
                    idle = self._running is None and not await self._dispatch_next()
                    if idle and not self._stopping:
                        await self._idle()
                    if self._running is not None:  # started by the loop, or by enqueue()
                        await self._see_through(self._running)
                except Exception:
                    self._log.exception("worker: dispatching failed; trying again shortly")
                    await self._idle()
                # Let handlers in between two jobs; one may start a job meanwhile.
                self._at_rest = True
                try:
                    await asyncio.sleep(0)
                finally:
                    self._at_rest = False
        finally:
            self._looping = False
            self._loop_exited.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; give the running job `grace` seconds, then abort it; wait for `run()`.

        An aborted async job goes back to the queue and an aborted sync job fails; queued sync
        jobs whose clients still wait are cancelled, and their handlers get 503.
        """
        self._stopping = True
        self._wakeup.set()
        run = self._running
        if run is not None and run.task is not None and not await run.ended(max(grace, 0.0)):
            run.abort(_Abort.SHUTDOWN)
            await run.ended()
        if self._looping:
            await self._loop_exited.wait()
        self._release_waiting_clients()
        self._lull.idle()

    def _recover(self) -> None:
        try:
            recovered = self._store.recover_interrupted(self._clock.now())
        except Exception:
            self._log.exception("worker: recovering interrupted jobs failed")
            return
        for job in recovered:
            self._log.warning("job %s: interrupted by a restart, now %s", job.id, job.state)
        if recovered:
            self._on_transition()

    async def _idle(self) -> None:
        timeout = self._idle_recheck
        now = self._clock.now()
        if not self._nothing_eligible:  # else the claim that found nothing read it
            try:
                self._backoff_ends = self._store.next_not_before(now)
            except Exception:
                self._log.exception("worker: reading the next backoff failed")
                self._backoff_ends = None  # look again after the idle recheck
        if self._backoff_ends is not None:
            timeout = min(timeout, max((self._backoff_ends - now).total_seconds(), 0.0))
        self._lull.idle()
        self._at_rest = True
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            self._nothing_eligible = False  # a backoff ended, or another process added work
        finally:
            self._at_rest = False
            if self._running is None:
                self._lull.busy()

    async def _dispatch_next(self) -> bool:
        """Claim and run one job; False when none is eligible, or while work waits for an
        unreachable target."""
        self._wakeup.clear()  # before claiming, so a wake() during the job is not lost
        for job_id in sorted(self._unrecorded):
            self._end_if_left_running(job_id)
        if self._unrecorded or await self._hold_for_target():
            return False
        now = self._clock.now()
        if self._nothing_eligible and (self._backoff_ends is None or now < self._backoff_ends):
            return False  # the last claim found nothing, and nothing came since
        job = self._store.claim_next(resident=self.resident, now=now, max_wait=self._max_wait)
        if job is None:
            self._backoff_ends = self._store.next_not_before(now)
            self._nothing_eligible = True
            return False
        self._transitioned(job)
        live = self._live.get(job.id) if job.sync else None
        if job.sync and live is None:
            # Nobody waits for the bytes (client gone, or queued before a restart): skip it.
            self._save(jobs.cancel(job, now), expected=job.state)
            self._log.info("job %s: sync job without a waiting client, cancelled", job.id)
            return True
        self._start(job)
        return True

    def _start(self, job: Job) -> _Run:
        """Start the attempt of the claimed `job` in a task of its own; the running job."""
        live = self._live.get(job.id) if job.sync else None
        run = _Run(job=job, live=live, started_at=job.started_at or self._clock.now())
        run.task = asyncio.create_task(self._attempt(run), name=f"foreman-job-{job.id}")
        self._running = run
        return run

    async def _see_through(self, run: _Run) -> None:
        """Watch the running job to its end and put it in order."""
        try:
            await self._await_run(run)
        finally:
            self._running = None

    async def _hold_for_target(self) -> bool:
        """Whether to leave the queue alone because Ollama is unreachable (ADR 0011).

        Queued work then waits instead of spending its attempts on a target that is down; a
        client waiting on a sync request is still served, so it gets its answer or its 502.
        """
        if self._target_in_doubt:
            self._target_in_doubt = False
            await self._inventory.refresh()
        down = self._inventory.degraded
        if down != self._target_down:
            self._target_down = down
            if down:
                self._log.warning("worker: Ollama is unreachable; queued jobs wait for it")
            else:
                self._log.info("worker: Ollama answers again; dispatching")
        return down and not self._live

    async def _await_run(self, run: _Run) -> None:
        try:
            while not await run.ended(self._running_recheck):
                if self._target_gone(run):
                    run.abort(_Abort.TARGET_GONE)
                    await run.ended()
                    break
        except asyncio.CancelledError:
            # run() itself was cancelled instead of stopped: still leave the job in order.
            run.abort(_Abort.SHUTDOWN)
            await run.ended()
            self._settle(run)
            raise
        self._settle(run)

    def _target_gone(self, run: _Run) -> bool:
        """Whether the running job's target has neither sent it anything nor answered the
        inventory's polls for `target_gone_grace`: a hung or vanished Ollama (ADR 0012)."""
        now = self._clock.now()
        if not self._inventory.degraded:
            self._unanswered_since = None
            return False
        if self._unanswered_since is None:
            self._unanswered_since = now
        silent_since = run.last_byte_at or run.started_at
        grace = self._target_gone_grace
        return now - self._unanswered_since >= grace and now - silent_since >= grace

    # -- one job ---------------------------------------------------------------------------

    async def _attempt(self, run: _Run) -> None:
        """Load if needed, then run the request; every outcome but cancellation and a job the
        store refused (`_Unstored`, answered by `_settle`) is handled here."""
        try:
            if run.job.state == JobState.LOADING:
                await self._load(run)
                working = self._save(
                    jobs.mark_working(run.job, self._clock.now()), expected=JobState.LOADING
                )
                if working is None:
                    return
                run.job = working
            if run.job.sync:
                await self._relay(run)
            else:
                await self._collect(run)
        except _Unstored:
            raise
        except TargetError as error:
            self._after_target_error(run, error)
        except Exception as error:
            self._log.exception("job %s: unexpected error", run.job.id)
            self._give_up(run, str(error) or type(error).__name__, status=500)

    async def _load(self, run: _Run) -> None:
        with self._lull.waiting_on_target():
            async with self._target.open(jobs.CHAT, load_body(run.job)) as response:
                async for _ in response.chunks():
                    run.last_byte_at = self._clock.now()
        self._recent = run.job.residency

    async def _relay(self, run: _Run) -> None:
        live = run.live
        assert live is not None
        with self._lull.waiting_on_target():
            async with self._target.open(run.job.kind, target_body(run.job)) as response:
                self._recent = run.job.residency
                live._begin(ResponseStarted(response.status, response.content_type))
                async for chunk in response.chunks():
                    run.last_byte_at = self._clock.now()
                    live._send(chunk)
        self._store_if_new(run)
        live._end()
        # The handler sends the answer before the job's bookkeeping is done (ADR 0016).
        asyncio.get_running_loop().call_soon(
            self._record_done, run.job, self._clock.now(), run.started_at
        )

    def _record_done(self, job: Job, now: datetime, started_at: datetime) -> None:
        """A sync job's bookkeeping once its client has the answer: its duration, and `done`,
        which the store writes with its next write (ADR 0015)."""
        self._durations.append((now - started_at).total_seconds())
        try:
            self._store.save_later(jobs.complete(job, now, None), expected=job.state)
        except Exception:
            self._log.exception("job %s: could not record it done", job.id)

    async def _collect(self, run: _Run) -> None:
        with self._lull.waiting_on_target():
            async with self._target.open(run.job.kind, target_body(run.job)) as response:
                self._recent = run.job.residency
                parts = []
                async for chunk in response.chunks():
                    run.last_byte_at = self._clock.now()
                    parts.append(chunk)
                body = b"".join(parts)
        artifacts = result_artifacts(run.job.kind, json.loads(body))
        self._finish(run, result=body, artifacts=artifacts)

    def _finish(self, run: _Run, result: bytes | None, artifacts: Sequence[Artifact] = ()) -> None:
        now = self._clock.now()
        done = self._save(
            jobs.complete(run.job, now, result), expected=run.job.state, artifacts=artifacts
        )
        if done is not None:
            self._durations.append((now - run.started_at).total_seconds())

    def _after_target_error(self, run: _Run, error: TargetError) -> None:
        if isinstance(error, TargetUnreachable):
            self._target_in_doubt = True
        if run.live is not None and run.live.started:
            self._give_up(run, str(error) or type(error).__name__, status=502)
            return
        now = self._clock.now()
        decision = self._policy.decide(run.job, error, now)
        if isinstance(decision, RetryLater):
            requeued = jobs.requeue(
                run.job, now, not_before=decision.not_before, error=decision.error
            )
            if self._save(requeued, expected=run.job.state) is not None:
                self._log.info(
                    "job %s: attempt %d failed (%s); retrying at %s",
                    run.job.id,
                    run.job.attempts,
                    decision.error,
                    decision.not_before.isoformat(),
                )
            return
        self._log.warning("job %s: failed: %s", run.job.id, decision.error)
        self._save(jobs.fail(run.job, now, decision.error), expected=run.job.state)
        if run.live is None:
            return
        if isinstance(error, TargetRejected):
            run.live._refuse(ResponseFailed(error.status, error.body, error.content_type))
        else:
            run.live._abort(502, decision.error)

    def _give_up(self, run: _Run, message: str, *, status: int) -> None:
        try:
            self._save(jobs.fail(run.job, self._clock.now(), message), expected=run.job.state)
        except Exception:
            self._log.exception("job %s: could not record its failure", run.job.id)
        if run.live is not None:
            run.live._abort(status, message)

    def _settle(self, run: _Run) -> None:
        """After the job's task: put an aborted job in order and release its client."""
        task = run.task
        assert task is not None
        died = None if task.cancelled() else task.exception()
        unstored = run.abort_reason == _Abort.UNSTORED or isinstance(died, _Unstored)
        if died is not None and not unstored:
            self._log.error("job %s: task died", run.job.id, exc_info=died)
        if unstored:
            if run.live is not None:
                run.live._abort(500, UNSTORED_MESSAGE)
        elif run.abort_reason == _Abort.CANCELLED:
            if run.live is not None:
                run.live._abort(CANCELLED_STATUS, CANCELLED_MESSAGE)
        elif run.abort_reason == _Abort.TARGET_GONE:
            grace = self._target_gone_grace.total_seconds()
            self._log.warning(
                "job %s: Ollama sent nothing for %gs and is unreachable", run.job.id, grace
            )
            self._after_target_error(
                run, TargetUnreachable(f"Ollama stopped answering (nothing for {grace:g}s)")
            )
        elif task.cancelled() or run.abort_reason == _Abort.SHUTDOWN:
            self._interrupt(run)
        if run.live is not None and not run.live.finished and not self._is_queued(run.job.id):
            run.live._abort(500, "the job ended without a response")
        if run.job.id in self._unrecorded:
            self._end_if_left_running(run.job.id)

    def _end_if_left_running(self, job_id: str) -> None:
        """After the store refused one of the job's transitions: if it still reads loading or
        working, end it as crash recovery would (requeued, or failed when sync or out of
        attempts). Until the store takes that write the worker claims nothing more."""
        try:
            current = self._store.get(job_id)
            if current.state in RUNNING_STATES:
                ended = self._save(
                    jobs.end_interrupted(current, self._clock.now(), UNRECORDED_MESSAGE),
                    expected=current.state,
                )
                if ended is not None:
                    self._log.warning(
                        "job %s: its end went unrecorded; now %s", job_id, ended.state
                    )
        except JobNotFound:
            pass  # not in the store (never stored, or pruned): nothing to end
        except Exception:
            self._log.warning("job %s: the store still refuses its end; trying again", job_id)
            return
        self._unrecorded.discard(job_id)

    def _interrupt(self, run: _Run) -> None:
        """Foreman stops: an async job goes back to the queue, a sync job fails."""
        try:
            current = self._store.get(run.job.id)
            if current.state in RUNNING_STATES:
                now = self._clock.now()
                ended = (
                    jobs.fail(current, now, STOPPED_MESSAGE)
                    if current.sync
                    else jobs.requeue(current, now, not_before=now, error=STOPPED_MESSAGE)
                )
                self._save(ended, expected=current.state)
        except Exception:
            self._log.exception("job %s: could not record its interruption", run.job.id)
        if run.live is not None:
            run.live._abort(SHUTDOWN_STATUS, STOPPED_MESSAGE)

    def _release_waiting_clients(self) -> None:
        """At stop: the queued sync jobs' clients get 503 and their jobs are cancelled."""
        for job_id, live in list(self._live.items()):
            if live.finished:
                continue
            try:
                job = self._store.get(job_id)
                if job.state == JobState.QUEUED:
                    self._save(jobs.cancel(job, self._clock.now()), expected=JobState.QUEUED)
            except Exception:
                self._log.exception("job %s: could not cancel it at shutdown", job_id)
            live._abort(SHUTDOWN_STATUS, SHUTTING_DOWN_MESSAGE)

    def _is_queued(self, job_id: str) -> bool:
        try:
            return self._store.get(job_id).state == JobState.QUEUED
        except Exception:
            return False

    def _save(
        self, job: Job, *, expected: JobState, artifacts: Sequence[Artifact] = ()
    ) -> Job | None:
        """Store a transition; None when the job moved on meanwhile (cancelled), which wins."""
        run = self._running
        if run is not None and run.job.id == job.id:
            self._store_if_new(run)  # `_Unstored` leaves nothing to record
        try:
            saved = self._store.save(job, expected=expected, artifacts=artifacts)
        except StaleJob as stale:
            self._log.info("job %s: now %s; the worker leaves it", job.id, stale.actual)
            return None
        except Exception:
            self._unrecorded.add(job.id)
            raise
        if saved.state == JobState.QUEUED:
            self._nothing_eligible = False
        self._transitioned(saved)
        return saved

    def _transitioned(self, job: Job) -> None:
        """Call `on_transition` if the store made a webhook event of `job`'s latest change."""
        # Only async jobs with a webhook have events (job.state_change); waking the dispatcher
        # for the others would put an outbox query on the path of every sync request.
        if job.webhook_url is not None and not job.sync:
            self._on_transition()
