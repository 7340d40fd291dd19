"""What to do when the target fails a job: try again later, or give up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from foreman_core.errors import TargetBusy, TargetError
from foreman_core.job import Job


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Requeue the job; it may not be claimed before `not_before`."""

    not_before: datetime
    error: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Fail the job with `error`."""

    error: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for retryable target failures, up to the job's `max_attempts`.

    The delay after attempt n is `base · 2^(n-1)`, capped at `cap`, or the target's Retry-After
    when that is longer. Failures that are not retryable fail the job at once.
    """

    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(seconds=60)

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt."""
        exponent = max(attempts - 1, 0)
        if exponent > 30:
            return self.cap
        return min(self.cap, self.base * (1 << exponent))

    def decide(self, job: Job, failure: TargetError, now: datetime) -> RetryLater | GiveUp:
        """Retry or give up on `job`, whose latest attempt (counted in `attempts`) failed."""
        error = str(failure) or type(failure).__name__
        if not failure.retryable or job.attempts >= job.max_attempts:
            return GiveUp(error)
        delay = self.backoff(job.attempts)
        if isinstance(failure, TargetBusy) and failure.retry_after is not None:
            delay = max(delay, timedelta(seconds=failure.retry_after))
        return RetryLater(not_before=now + delay, error=error)
