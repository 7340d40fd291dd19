"""`JobRecords`: the worker's writes to the store, and the mending of jobs left running there.

Every transition the worker makes goes through `save`. Three things can leave a job reading
loading or working in the store after its run is over, and each is mended here as crash
recovery would end it (an async job requeued, its attempt counted; failed when sync or out of
attempts):
- a crash: `recover_crashed`, when the worker starts;
- a stop: `end_stopped`, except that a stop requeues an async job even on its last attempt;
- a store that refused a write (locked past its busy timeout, a full disk): `mend`, and until
  that write is taken the worker claims nothing (`behind`).

A sync job started before it was stored (ADR 0015) is held here until `store_new` stores it,
which `save` does first for any transition of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from foreman_core import job as jobs
from foreman_core.errors import JobNotFound, StaleJob
from foreman_core.job import RUNNING_STATES, Artifact, Job, JobState
from foreman_core.ports import Clock, JobStore

STOPPED_MESSAGE = "interrupted: foreman stopped while the job ran"
UNRECORDED_MESSAGE = "interrupted: the job store would not record how the job ended"
UNSTORED_MESSAGE = "the job store would not record the job"


class Unstored(Exception):
    """The store would not record a job the worker had started before storing it."""


class JobRecords:
    """What the worker writes to the store, and how it puts right what a write left wrong."""

    def __init__(
        self,
        *,
        store: JobStore,
        clock: Clock,
        log: logging.Logger,
        on_transition: Callable[[], None],
        on_requeue: Callable[[], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._log = log
        # The webhook dispatcher's wake: called after a change that made a webhook event.
        self._on_transition = on_transition
        # Called when a job goes back to the queue: a claim may find it.
        self._on_requeue = on_requeue
        # A new job started before it was stored, and its claim (ADR 0015).
        self._new: tuple[Job, Job] | None = None
        # Jobs whose transition the store refused; mended once their run is over.
        self._unrecorded: set[str] = set()

    @property
    def behind(self) -> bool:
        """Whether the store has yet to take the end of a job whose end it refused."""
        return bool(self._unrecorded)

    def save(
        self, job: Job, *, expected: JobState, artifacts: Sequence[Artifact] = ()
    ) -> Job | None:
        """Store a transition; None when the job moved on meanwhile (cancelled), which wins.

        A job still held by `hold_new` is stored first (`Unstored` if the store refuses it).
        Any other refusal is raised, and the job is left for `mend`.
        """
        if self._new is not None and self._new[1].id == job.id:
            self.store_new()
        try:
            saved = self._store.save(job, expected=expected, artifacts=artifacts)
        except StaleJob as stale:
            self._log.info("job %s: now %s; the worker leaves it", job.id, stale.actual)
            return None
        except Exception:
            self._unrecorded.add(job.id)
            raise
        if saved.state == JobState.QUEUED:
            self._on_requeue()
        self.transitioned(saved)
        return saved

    def save_later(self, job: Job, *, expected: JobState) -> None:
        """Store a transition with the store's next write, without waiting (ADR 0015)."""
        self._store.save_later(job, expected=expected)

    def transitioned(self, job: Job) -> None:
        """Call `on_transition` if the store made a webhook event of `job`'s latest change."""
        # Only async jobs with a webhook have events (job.state_change); waking the dispatcher
        # for the others would put an outbox query on the path of every sync request.
        if job.webhook_url is not None and not job.sync:
            self._on_transition()

    def hold_new(self, job: Job, claimed: Job) -> None:
        """The new `job` was claimed as `claimed` without the store: `store_new` stores it."""
        self._new = (job, claimed)

    def store_new(self) -> None:
        """Store the job `hold_new` holds, already claimed, if any; `Unstored` if the store
        refuses it."""
        if self._new is None:
            return
        job, claimed = self._new
        self._new = None
        try:
            self._store.add_claimed(job, claimed)
        except Exception as error:
            self._log.exception("job %s: the store refused the job; aborting it", job.id)
            raise Unstored(UNSTORED_MESSAGE) from error
        self.transitioned(claimed)

    def is_queued(self, job_id: str) -> bool:
        """Whether the store has the job queued (False if it cannot say)."""
        try:
            return self._store.get(job_id).state == JobState.QUEUED
        except Exception:
            return False

    # -- putting jobs in order ---------------------------------------------------------------

    def recover_crashed(self) -> None:
        """At start: end the jobs a crash left loading or working (`recover_interrupted`)."""
        try:
            recovered = self._store.recover_interrupted(self._clock.now())
        except Exception:
            self._log.exception("worker: recovering interrupted jobs failed")
            return
        for job in recovered:
            self._log.warning("job %s: interrupted by a restart, now %s", job.id, job.state)
        if recovered:
            self._on_transition()

    def end_stopped(self, job_id: str) -> None:
        """foreman stopped while the job ran: an async job goes back to the queue, a sync job
        fails (its client is about to go)."""
        try:
            current = self._store.get(job_id)
            if current.state in RUNNING_STATES:
                now = self._clock.now()
                ended = (
                    jobs.fail(current, now, STOPPED_MESSAGE)
                    if current.sync
                    else jobs.requeue(current, now, not_before=now, error=STOPPED_MESSAGE)
                )
                self.save(ended, expected=current.state)
        except Exception:
            self._log.exception("job %s: could not record its interruption", job_id)

    def cancel_if_queued(self, job_id: str) -> None:
        """At stop: cancel the job if it is still queued (a sync job whose client goes)."""
        try:
            job = self._store.get(job_id)
            if job.state == JobState.QUEUED:
                self.save(jobs.cancel(job, self._clock.now()), expected=JobState.QUEUED)
        except Exception:
            self._log.exception("job %s: could not cancel it at shutdown", job_id)

    def mend(self, only: str | None = None) -> None:
        """End each job whose end the store refused (or just the job `only`, if it is one) as
        crash recovery would, if it still reads loading or working and the store takes it."""
        for job_id in sorted(self._unrecorded):
            if only is None or job_id == only:
                self._mend(job_id)

    def _mend(self, job_id: str) -> None:
        try:
            current = self._store.get(job_id)
            if current.state in RUNNING_STATES:
                ended = self.save(
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
