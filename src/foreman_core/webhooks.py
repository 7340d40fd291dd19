"""Webhook delivery: the event JSON, and the dispatcher that drains the durable outbox.

Delivery is at-least-once and in order per job: the outbox only ever offers a job's oldest
undelivered event, and the dispatcher sends at most one event of a job at a time. A failed
attempt is retried after 1, 2, 4, 8, 16 s (or the receiver's Retry-After, if longer); after the
last retry the event is abandoned. Nothing the receiver does touches the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from foreman_core.artifacts import artifact_views
from foreman_core.errors import JobNotFound
from foreman_core.job import Job, JobState, StateChange
from foreman_core.lull import WorkerLull
from foreman_core.ports import (
    Clock,
    DeliveryResult,
    JobStore,
    PendingDelivery,
    WebhookOutbox,
    WebhookSender,
)

EVENT_TYPE = "job.state_changed"
DEFAULT_SCHEDULE: tuple[float, ...] = (1, 2, 4, 8, 16)
"""Seconds to wait before each retry; one first attempt plus one retry per entry."""
DEFAULT_CONCURRENCY = 16
MAX_RETRY_AFTER = 3600.0
"""A receiver's Retry-After is honoured up to an hour, so one cannot park a job's events."""
POLL_INTERVAL = 1.0
"""The longest the dispatcher sleeps without looking at the outbox: a safety net for events
recorded without a `wake()` (and for other jobs' events falling due while some are in flight)."""
ERROR_PAUSE = 1.0
"""How long to back off after the outbox itself failed, before trying it again."""
MAX_HOLD = 1.0
"""The longest a busy worker holds deliveries back: then one round of them goes anyway, so a
stream of instant jobs slows webhooks down but never stops them."""


def rfc3339(moment: datetime) -> str:
    """UTC timestamp with microseconds and a `Z` (the job object's format)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(
    change: StateChange, job: Job | None, artifacts: list[dict[str, Any]] | None
) -> bytes:
    """The JSON of one `job.state_changed` event.

    `result` (the job's result, parsed) and `artifacts` are filled only for a `done` event,
    from `job` and `artifacts` as read at delivery time; a pruned job (None) leaves them null.
    """
    done = change.state == JobState.DONE
    event: dict[str, Any] = {
        "type": EVENT_TYPE,
        "event_id": change.event_id,
        "job_id": change.job_id,
        "model": change.model,
        "state": str(change.state),
        "previous_state": None if change.previous_state is None else str(change.previous_state),
        "attempts": change.attempts,
        "timestamp": rfc3339(change.timestamp),
        "error": change.error if change.state == JobState.FAILED else None,
        "result": _parsed_result(job) if done else None,
        "artifacts": artifacts if done and job is not None else None,
    }
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _parsed_result(job: Job | None) -> Any:
    if job is None or not job.result:
        return None
    try:
        return json.loads(job.result)
    except ValueError:
        # A result is always the target's JSON; keep a stray non-JSON one readable, not lost.
        return job.result.decode(errors="replace")


def describe_failure(result: DeliveryResult) -> str:
    """A one-line reason for a failed delivery, for the outbox and the log."""
    if result.error:
        return result.error
    if result.status is not None:
        return f"receiver answered {result.status}"
    return "delivery failed"


class WebhookDispatcher:
    """Drains the webhook outbox: sends due events, records the outcome, schedules retries.

    Runs as its own task (`run()`). `wake()` after a transition sends its event at once and
    never blocks; without it the outbox is still looked at every `poll_interval` seconds. Store
    calls are short and synchronous; HTTP happens in per-event tasks, at most `concurrency` at
    once and never two of one job. Given the worker's `lull`, deliveries start only in one (the
    worker idle or waiting on the target), or after `max_hold` seconds without one.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        store: JobStore,
        sender: WebhookSender,
        clock: Clock,
        public_url: str,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        logger: logging.Logger | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_retry_after: float = MAX_RETRY_AFTER,
        poll_interval: float = POLL_INTERVAL,
        lull: WorkerLull | None = None,
        max_hold: float = MAX_HOLD,
    ) -> None:
        self._outbox = outbox
        self._store = store
        self._sender = sender
        self._clock = clock
        self._public_url = public_url
        self._schedule = tuple(schedule)
        self._log = logger or logging.getLogger("foreman.webhooks")
        self._concurrency = max(1, concurrency)
        self._max_retry_after = max_retry_after
        self._poll_interval = poll_interval
        self._lull = lull
        self._max_hold = max_hold
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()

    @property
    def max_attempts(self) -> int:
        """Attempts per event before it is abandoned: the first one plus one per retry delay."""
        return len(self._schedule) + 1

    def wake(self) -> None:
        """Look at the outbox now (call after a transition); returns at once."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver events until `stop()`; survives failures of the outbox, sender and receiver."""
        self._running = True
        self._stopped.clear()
        try:
            while not self._stopping:
                self._wakeup.clear()
                if self._lull is not None:
                    await self._lull.wait(self._max_hold)
                try:
                    delay = self._dispatch_due()
                except Exception:
                    self._log.exception("webhook outbox failed; retrying in %ss", ERROR_PAUSE)
                    delay = ERROR_PAUSE
                await self._sleep(delay)
        finally:
            await self._cancel_in_flight()
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Make `run()` return; deliveries in flight are abandoned and stay in the outbox."""
        self._stopping = True
        self._wakeup.set()
        if self._running:
            await self._stopped.wait()

    # -- the loop -------------------------------------------------------------------------

    def _dispatch_due(self) -> float:
        """Start the due deliveries there is room for; return how long to sleep."""
        now = self._clock.now()
        room = self._concurrency - len(self._in_flight)
        if room > 0:
            # Heads already in flight are still due until marked, so ask for enough to skip them.
            for pending in self._outbox.due_deliveries(now, limit=room + len(self._in_flight)):
                if room == 0:
                    break
                if pending.event.job_id not in self._in_flight:
                    self._start(pending)
                    room -= 1
        return self._seconds_to_next(now)

    def _seconds_to_next(self, now: datetime) -> float:
        next_at = self._outbox.next_delivery_at()
        if next_at is None or next_at <= now:
            # Nothing pending, or what is due is in flight: a finishing delivery wakes the loop.
            return self._poll_interval
        return min((next_at - now).total_seconds(), self._poll_interval)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)

    def _start(self, pending: PendingDelivery) -> None:
        job_id = pending.event.job_id
        task = asyncio.create_task(self._deliver(pending), name=f"webhook {pending.event.event_id}")
        self._in_flight[job_id] = task
        task.add_done_callback(lambda done: self._finished(job_id, done))

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(job_id) is task:
            del self._in_flight[job_id]
        self._wakeup.set()

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one delivery ---------------------------------------------------------------------

    async def _deliver(self, pending: PendingDelivery) -> None:
        change = pending.event
        try:
            result = await self._attempt(change)
            self._record(pending, result)
        except Exception:
            self._log.exception(
                "webhook %s for job %s: could not record the delivery",
                change.event_id,
                change.job_id,
            )
            # The event stays due; holding its job's slot a moment keeps a broken outbox from
            # being hammered in a tight loop.
            await asyncio.sleep(ERROR_PAUSE)

    async def _attempt(self, change: StateChange) -> DeliveryResult:
        try:
            body = self.render(change)
        except Exception as exc:
            self._log.exception("webhook %s: could not render the event", change.event_id)
            return DeliveryResult(ok=False, error=f"could not render event: {exc}")
        try:
            return await self._sender.send(change.url, change.event_id, body)
        except Exception as exc:
            return DeliveryResult(ok=False, error=f"sender failed: {type(exc).__name__}: {exc}")

    def render(self, change: StateChange) -> bytes:
        """The event's body; a `done` event's with the job's result and artifacts as they are
        now (only those read the store)."""
        if change.state != JobState.DONE:
            return event_body(change, None, None)
        try:
            job = self._store.get(change.job_id)
            stored = self._store.list_artifacts(job.id)
        except JobNotFound:
            return event_body(change, None, None)  # pruned meanwhile (FOREMAN_JOB_TTL)
        return event_body(change, job, artifact_views(job.id, stored, self._public_url))

    def _record(self, pending: PendingDelivery, result: DeliveryResult) -> None:
        change = pending.event
        now = self._clock.now()
        if result.ok:
            self._outbox.mark_delivered(change.event_id, now)
            return
        reason = describe_failure(result)
        next_at = self.next_attempt_at(pending.delivery_attempts, result, now)
        self._outbox.mark_failed_attempt(change.event_id, next_attempt_at=next_at, error=reason)
        attempt = pending.delivery_attempts + 1
        if next_at is None:
            self._log.warning(
                "webhook %s (job %s, %s) abandoned after %d attempts: %s",
                change.event_id,
                change.job_id,
                change.state,
                attempt,
                reason,
            )
        else:
            self._log.info(
                "webhook %s (job %s) attempt %d failed: %s; retrying at %s",
                change.event_id,
                change.job_id,
                attempt,
                reason,
                rfc3339(next_at),
            )

    def next_attempt_at(
        self, failed_before: int, result: DeliveryResult, now: datetime
    ) -> datetime | None:
        """When to retry after a failed attempt that had `failed_before` failures before it;
        None once the schedule is used up."""
        if failed_before >= len(self._schedule):
            return None
        delay = self._schedule[failed_before]
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, self._max_retry_after))
        return now + timedelta(seconds=delay)
