"""Errors of the foreman core.

ForemanError
├── InvalidTransition        a job state change the state machine forbids
├── StaleJob                 a write expected a state the job is no longer in
├── JobNotFound
├── ArtifactNotFound
├── ModelNotFound            the target does not have the model
├── QueueFull                too many queued jobs; try again later
├── IdempotencyConflict      an Idempotency-Key reused with a different submission
└── TargetError              the inference target failed a request
    ├── TargetUnreachable    no byte came back: refused, reset, timed out   (retryable)
    ├── TargetBusy           the target answered 503 or 429                 (retryable)
    ├── TargetRejected       any other HTTP error; status and body kept     (final)
    └── TargetBrokeStream    the response failed after its first byte       (final)
"""

from __future__ import annotations


class ForemanError(Exception):
    """Base of every error foreman raises on purpose."""


class InvalidTransition(ForemanError):
    """A job was asked to move between two states that the state machine does not connect."""

    def __init__(self, job_id: str, current: str, requested: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {requested}")
        self.job_id = job_id
        self.current = current
        self.requested = requested


class StaleJob(ForemanError):
    """A write was based on a state the stored job has since left (someone else changed it)."""

    def __init__(self, job_id: str, expected: str, actual: str) -> None:
        super().__init__(f"job {job_id}: expected state {expected}, found {actual}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


class JobNotFound(ForemanError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class ArtifactNotFound(ForemanError):
    """The job has no artifact of this name."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(f"job {job_id} has no artifact {name!r}")
        self.job_id = job_id
        self.name = name


class ModelNotFound(ForemanError):
    """The target does not have the model; the message is Ollama's own wording."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class QueueFull(ForemanError):
    """The queue holds its maximum of queued jobs; `retry_after` estimates when to come back."""

    def __init__(self, limit: int, retry_after: float | None = None) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")
        self.limit = limit
        self.retry_after = retry_after


class IdempotencyConflict(ForemanError):
    """An Idempotency-Key was reused for a submission that differs from the first one."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for job {job_id} with a different body"
        )
        self.key = key
        self.job_id = job_id


class TargetError(ForemanError):
    """The inference target failed a request. `retryable` says whether trying again may help."""

    retryable: bool = False


class TargetUnreachable(TargetError):
    """No response byte arrived: connection refused or reset, or a timeout while connecting."""

    retryable = True


class TargetBusy(TargetError):
    """The target answered 503 or 429; `retry_after` is its Retry-After in seconds, if any."""

    retryable = True

    def __init__(self, status: int, body: bytes, retry_after: float | None = None) -> None:
        super().__init__(f"target answered {status}: {body[:200].decode(errors='replace')}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class TargetRejected(TargetError):
    """The target answered an HTTP error that retrying will not fix; relayed to the client."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        super().__init__(f"target answered {status}: {body[:200].decode(errors='replace')}")
        self.status = status
        self.body = body
        self.content_type = content_type


class TargetBrokeStream(TargetError):
    """The response failed after its first byte had arrived; it cannot be retried transparently."""
