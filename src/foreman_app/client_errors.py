"""Errors of foreman's Python client.

ClientError
├── ServerUnreachable        no HTTP answer: connection refused, unknown host, timed out
├── ForemanTimeout           `wait()` gave up before the job finished (also a TimeoutError)
└── ApiError                 foreman answered with an HTTP error; `status`, `message` kept
    ├── BadRequest           400: a field of the request is wrong
    ├── Unauthorized         401: missing or wrong token
    ├── NotFound             404: no such job, artifact or model
    ├── Conflict             409, 422: the job already finished; an Idempotency-Key reused
    └── QueueFullError       503: too much queued work; `retry_after` in seconds, if given
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foreman_app.client_views import JobView


class ClientError(Exception):
    """Base of every error the foreman client raises."""


class ServerUnreachable(ClientError):
    """No HTTP answer came back from foreman."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach foreman at {url} ({reason})")
        self.url = url
        self.reason = reason


class ForemanTimeout(ClientError, TimeoutError):
    """The job had not finished when `wait()` ran out of time; `job` is its last view."""

    def __init__(self, job: JobView, timeout: float) -> None:
        super().__init__(f"job {job.job_id} is still {job.state} after {timeout:g}s")
        self.job = job
        self.timeout = timeout


class ApiError(ClientError):
    """foreman answered with an HTTP error; `message` is the server's own `error` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(ApiError):
    """400: the server named a request field it could not accept."""


class Unauthorized(ApiError):
    """401: the server wants a valid `Authorization: Bearer` token."""


class NotFound(ApiError):
    """404: no such job, artifact or model."""


class Conflict(ApiError):
    """409 or 422: the job has already finished, or an Idempotency-Key was reused."""


class QueueFullError(ApiError):
    """503: the queue is full; try again after `retry_after` seconds (None if not said)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: Conflict,
}
"""The ApiError subclass for each status that has one (503 is built apart: it has retry_after)."""
