"""`Worker`: the loop that runs chat and generate jobs on the target, one at a time.

It claims the scheduler's choice from the store, starts the job's attempt (`attempt.py`) and
watches it to its end. It claims nothing while the target is unreachable and no client waits
(`health.py`, ADR 0011) or while the store has yet to take a job's end (`records.py`). A sync
job that arrives while the loop rests between jobs is started at once (ADR 0015).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, auto

from foreman_core import job as jobs
from foreman_core.errors import QueueFull, StaleJob
from foreman_core.job import RUNNING_STATES, Job, normalize_model
from foreman_core.lull import WorkerLull
from foreman_core.ports import (
    AbortReason,
    Clock,
    InferenceTarget,
    JobStore,
    ModelInventory,
    WaitingClient,
)
from foreman_core.retry import RetryPolicy
from foreman_core.worker.attempt import CANCELLED_MESSAGE, Attempts, Interruption, Run, abort
from foreman_core.worker.health import TARGET_GONE_GRACE, TargetHealth
from foreman_core.worker.records import JobRecords, Unstored

SHUTTING_DOWN_MESSAGE = "foreman is shutting down"


class _Phase(Enum):
    """Where the loop is."""

    NEW = auto()
    """`run()` has not begun."""
    BUSY = auto()
    """Claiming, or watching a job."""
    RESTING = auto()
    """Between jobs, with the event loop left to others: `enqueue` may start a job itself."""
    STOPPING = auto()
    """`stop()` was called: the loop claims nothing more."""
    STOPPED = auto()
    """`run()` returned, or `stop()` came first."""


@dataclass(frozen=True, slots=True)
class _NothingEligible:
    """The last claim found no eligible job, and nothing was added or requeued since."""

    until: datetime | None
    """When the earliest backoff of a queued job ends (None: no job is in backoff)."""

    def holds(self, now: datetime) -> bool:
        """Whether a claim now would find nothing either."""
        return self.until is None or now < self.until


class Worker:
    """Runs queued chat/generate jobs one at a time: at most one request in flight at the target.

    The handler of a sync request hands its `WaitingClient` to `enqueue` with the job and calls
    `forget()` when it is done; `cancel()` serves both DELETE /jobs/{id} and a client that went
    away.
    """

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
        self._inventory = inventory
        self._clock = clock
        self._max_wait = max_wait
        self._log = logger or logging.getLogger("foreman.worker")
        # A safety net only: every change that matters calls wake(), and backoffs are timed.
        self._idle_recheck = idle_recheck
        # How often the running job is looked at for a target that went silent (ADR 0012).
        self._running_recheck = running_recheck
        # Tells work sharing the loop (webhook deliveries) when the worker does not need it.
        self._lull = lull or WorkerLull()
        self._health = TargetHealth(inventory, clock, self._log, target_gone_grace)
        self._records = JobRecords(
            store=store,
            clock=clock,
            log=self._log,
            on_transition=on_transition or (lambda: None),
            on_requeue=self._queue_changed,
        )
        self._attempts = Attempts(
            target=target,
            clock=clock,
            policy=policy,
            lull=self._lull,
            records=self._records,
            health=self._health,
            log=self._log,
        )
        self._clients: dict[str, WaitingClient] = {}
        self._wakeup = asyncio.Event()
        self._phase = _Phase.NEW
        self._loop_exited = asyncio.Event()
        self._running: Run | None = None
        self._nothing_eligible: _NothingEligible | None = None

    # -- the handlers' side ----------------------------------------------------------------

    def enqueue(
        self, job: Job, *, max_queued: int | None, client: WaitingClient | None = None
    ) -> Job:
        """Add a new job to the store and dispatch it when its turn comes; the stored job.

        `client` waits for a sync job's response: the worker feeds it as the job runs (a sync
        job nobody waits for is cancelled when its turn comes). A full queue raises `QueueFull`
        carrying when to come back: about one job's duration, when a slot frees up. The
        store's other errors (e.g. `IdempotencyConflict`) pass through, and the client is
        forgotten. A sync job with its client that arrives while the loop rests, with no
        queued job that could go before it, is started at once instead, and stored as its
        request goes to the target (ADR 0015).
        """
        if client is not None:
            self._clients[job.id] = client
        try:
            if job.sync and client is not None and self._can_start_at_once():
                self._lull.busy()
                stored = self._run_now(job, client)
                self._wakeup.set()  # the loop watches the job from here
                return stored
            try:
                stored = self._store.add(job, max_queued=max_queued)
            except QueueFull as full:
                raise QueueFull(full.limit, self.estimated_wait(1)) from None
        except BaseException:
            self._clients.pop(job.id, None)  # never stored: nobody will feed this client
            raise
        self.wake()
        return stored

    def forget(self, job_id: str) -> None:
        """The handler is done with the sync job's response (it was sent, or its client left)."""
        self._clients.pop(job_id, None)

    def wake(self) -> None:
        """Work arrived: look for a job to dispatch now."""
        self._queue_changed()
        self._wakeup.set()

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
        self._records.transitioned(cancelled)
        run = self._running
        if job.state in RUNNING_STATES and run is not None and run.job.id == job_id:
            run.interrupt(Interruption.CANCELLED)
            await run.ended()
        abort(self._clients.get(job_id), AbortReason.CANCELLED, CANCELLED_MESSAGE)
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
        recent = self._attempts.last_residency
        if recent is not None:
            names.append(recent)
            loaded_model = recent.split("|", 1)[0]
        for name in self._inventory.resident():
            model = normalize_model(name)
            if model not in names and model != loaded_model:
                names.append(model)
        return names

    def estimated_wait(self, queued: int) -> float:
        """Seconds until `queued` more jobs have run (for Retry-After), at least 1."""
        return self._attempts.estimated_wait(queued)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch jobs until `stop()`; no failure of a job or of the store ends the loop."""
        if self._phase is _Phase.NEW:
            self._phase = _Phase.BUSY
        self._loop_exited.clear()
        try:
            self._records.recover_crashed()
            while self._phase is _Phase.BUSY:
                try:
                    idle = self._running is None and not await self._dispatch_next()
                    if idle and self._phase is _Phase.BUSY:
                        await self._idle()
                    if self._running is not None:  # started by the loop, or by enqueue()
                        await self._see_through(self._running)
                except Exception:
                    self._log.exception("worker: dispatching failed; trying again shortly")
                    await self._idle()
                # Let handlers in between two jobs; one may start a job meanwhile.
                with self._resting():
                    await asyncio.sleep(0)
        finally:
            self._phase = _Phase.STOPPED
            self._loop_exited.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; give the running job `grace` seconds, then abort it; wait for `run()`.

        An aborted async job goes back to the queue and an aborted sync job fails; queued sync
        jobs whose clients still wait are cancelled, and their clients told foreman stops.
        """
        looping = self._phase in (_Phase.BUSY, _Phase.RESTING, _Phase.STOPPING)
        self._phase = _Phase.STOPPING if looping else _Phase.STOPPED
        self._wakeup.set()
        run = self._running
        if run is not None and run.task is not None and not await run.ended(max(grace, 0.0)):
            run.interrupt(Interruption.SHUTDOWN)
            await run.ended()
        if looping:
            await self._loop_exited.wait()
        for job_id, client in list(self._clients.items()):
            if not client.finished:
                self._records.cancel_if_queued(job_id)
                client.abort(AbortReason.SHUTDOWN, SHUTTING_DOWN_MESSAGE)
        self._lull.idle()

    @contextmanager
    def _resting(self) -> Iterator[None]:
        """The loop rests for the duration, unless it is stopping."""
        if self._phase is _Phase.BUSY:
            self._phase = _Phase.RESTING
        try:
            yield
        finally:
            if self._phase is _Phase.RESTING:
                self._phase = _Phase.BUSY

    def _queue_changed(self) -> None:
        """A job was added or went back to the queue: a claim may find it."""
        self._nothing_eligible = None

    async def _idle(self) -> None:
        """Rest until woken, the earliest backoff ends, or the idle recheck comes round."""
        timeout = self._idle_recheck
        now = self._clock.now()
        if self._nothing_eligible is not None:  # the claim that found nothing read it
            backoff_ends = self._nothing_eligible.until
        else:
            try:
                backoff_ends = self._store.next_not_before(now)
            except Exception:
                self._log.exception("worker: reading the next backoff failed")
                backoff_ends = None  # look again after the idle recheck
        if backoff_ends is not None:
            timeout = min(timeout, max((backoff_ends - now).total_seconds(), 0.0))
        self._lull.idle()
        try:
            with self._resting():
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
        except TimeoutError:
            self._queue_changed()  # a backoff ended, or another process added work
        finally:
            if self._running is None:
                self._lull.busy()

    async def _dispatch_next(self) -> bool:
        """Claim and start one job; False when none is eligible, or while the queue is held."""
        self._wakeup.clear()  # before claiming, so a wake() during the job is not lost
        self._records.mend()
        if self._records.behind or await self._hold_for_target():
            return False
        now = self._clock.now()
        if self._nothing_eligible is not None and self._nothing_eligible.holds(now):
            return False  # the last claim found nothing, and nothing came since
        job = self._store.claim_next(resident=self.resident, now=now, max_wait=self._max_wait)
        if job is None:
            self._nothing_eligible = _NothingEligible(until=self._store.next_not_before(now))
            return False
        self._records.transitioned(job)
        client = self._clients.get(job.id) if job.sync else None
        if job.sync and client is None:
            # Nobody waits for the bytes (client gone, or queued before a restart): skip it.
            self._records.save(jobs.cancel(job, now), expected=job.state)
            self._log.info("job %s: sync job without a waiting client, cancelled", job.id)
            return True
        self._running = self._attempts.start(job, client)
        return True

    async def _hold_for_target(self) -> bool:
        """Whether to leave the queue alone because Ollama is unreachable (ADR 0011).

        Queued work then waits instead of spending its attempts on a target that is down; a
        client waiting on a sync request is still served, so it gets its answer or its error.
        """
        return await self._health.down() and not self._clients

    def _can_start_at_once(self) -> bool:
        """Whether the loop rests between jobs and no queued job could go before a new one:
        the last claim found none eligible, nothing was added or requeued since, and no backoff
        has ended meanwhile; nor is a job's end unrecorded or the target in doubt."""
        return (
            self._phase is _Phase.RESTING
            and self._running is None
            and self._nothing_eligible is not None
            and self._nothing_eligible.holds(self._clock.now())
            and not self._records.behind
            and self._health.trusted
        )

    def _run_now(self, job: Job, client: WaitingClient) -> Job:
        """Claim the new `job` without the store and start it; the store records it claimed
        right after the attempt's first step, which sends the request, so that the write
        overlaps the target's work instead of delaying the request (or before the attempt's
        first write, should it end in its first step). The claimed job."""
        claimed = jobs.claim(job, self._clock.now(), resident=job.residency in self.resident)
        self._records.hold_new(job, claimed)
        run = self._running = self._attempts.start(claimed, client)
        asyncio.get_running_loop().call_soon(self._store_or_interrupt, run)
        return claimed

    def _store_or_interrupt(self, run: Run) -> None:
        try:
            self._records.store_new()
        except Unstored:
            run.interrupt(Interruption.UNSTORED)

    async def _see_through(self, run: Run) -> None:
        """Watch the running job to its end, give up its request if the target is gone, and
        put the job in order."""
        try:
            try:
                while not await run.ended(self._running_recheck):
                    if self._health.gone(run.last_byte_at or run.started_at):
                        run.interrupt(Interruption.TARGET_GONE)
                        await run.ended()
                        break
            except asyncio.CancelledError:
                # run() itself was cancelled instead of stopped: still leave the job in order.
                run.interrupt(Interruption.SHUTDOWN)
                await run.ended()
                self._attempts.settle(run)
                raise
            self._attempts.settle(run)
        finally:
            self._running = None
