"""What each method of foreman's Python clients sends and how it reads the answer, free of I/O.

A method of `ForemanClient` or `AsyncForemanClient` describes its request as a `Call` built
here and hands it to its client's `_send`, blocking or awaited. So the requests, the checks of
the answers and the errors they become are written once for both clients; what each client
adds is only how it waits (for the network, between polls).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from foreman_app.client_errors import (
    ERRORS_BY_STATUS,
    ApiError,
    ForemanTimeout,
    QueueFullError,
    ServerUnreachable,
)
from foreman_app.client_views import JobListing, JobView

DEFAULT_URL = "http://127.0.0.1:8080"

Kind = Literal["chat", "generate"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to foreman and `read`, which turns its answer into the method's result or
    raises the ClientError it stands for."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request, built by `http`, so that its base URL, headers and timeout apply."""
        return http.build_request(
            self.method, self.path, params=self.params, json=self.json, headers=self.headers
        )


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a failure to get any HTTP answer from foreman at `url` into ServerUnreachable."""
    try:
        yield
    except httpx.TransportError as exc:
        raise ServerUnreachable(url, _reason(exc)) from exc


# -- where foreman is, and who asks ----------------------------------------------------------


def base_url(url: str | None = None) -> str:
    """foreman's base URL: `url`, else FOREMAN_URL, else the default; raises ValueError when it
    is not an http(s) URL with a host."""
    chosen = (url or os.environ.get("FOREMAN_URL") or DEFAULT_URL).strip().rstrip("/")
    try:
        parsed = httpx.URL(chosen)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a valid URL: {chosen!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL with a host: {chosen!r}")
    return chosen


def auth_token(token: str | None = None) -> str | None:
    """The bearer token: `token`, else FOREMAN_AUTH_TOKEN; of a comma-separated list (the
    server's form of the variable) the first entry."""
    chosen = token if token is not None else os.environ.get("FOREMAN_AUTH_TOKEN")
    first = (chosen or "").split(",")[0].strip()
    return first or None


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers every request carries: the bearer token, if there is one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- the calls ---------------------------------------------------------------------------------


def submission_body(
    model: str,
    prompt: str | None = None,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    system: str | None = None,
    kind: Kind = "chat",
    webhook: str | None = None,
    priority: int = 0,
    options: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The `POST /jobs` body: an Ollama chat request (system message, `messages`, then the
    prompt as a user message) or, for `kind="generate"`, a generate request."""
    if not model:
        raise ValueError("model is required")
    if kind == "generate":
        if messages is not None:
            raise ValueError("a generate job takes a prompt, not messages")
        body: dict[str, Any] = {"model": model, "kind": "generate", "prompt": prompt or ""}
        if system is not None:
            body["system"] = system
    elif kind == "chat":
        if prompt is None and not messages:
            raise ValueError("a chat job needs a prompt or messages")
        chat: list[dict[str, Any]] = []
        if system is not None:
            chat.append({"role": "system", "content": system})
        chat.extend(dict(message) for message in messages or [])
        if prompt is not None:
            chat.append({"role": "user", "content": prompt})
        body = {"model": model, "messages": chat}
    else:
        raise ValueError(f"kind must be 'chat' or 'generate', not {kind!r}")
    if webhook is not None:
        body["state_webhook_url"] = webhook
    body["priority"] = priority
    if options is not None:
        body["options"] = dict(options)
    body.update(extra)
    return body


def submit(body: dict[str, Any], idempotency_key: str | None) -> Call[str]:
    """`POST /jobs`: the id of the queued job."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    return Call("POST", "/jobs", _submitted_id, json=body, headers=headers)


def get(job_id: str) -> Call[JobView]:
    """`GET /jobs/{id}`: the job."""
    return Call("GET", _job_path(job_id), _job)


def list_jobs(
    state: str | None, model: str | None, limit: int, cursor: str | None
) -> Call[JobListing]:
    """`GET /jobs`: one page of jobs."""
    params: dict[str, str | int] = {"limit": limit}
    for name, value in (("state", state), ("model", model), ("cursor", cursor)):
        if value is not None:
            params[name] = value
    return Call("GET", "/jobs", _listing, params=params)


def cancel(job_id: str) -> Call[JobView]:
    """`DELETE /jobs/{id}`: the cancelled job."""
    return Call("DELETE", _job_path(job_id), _job)


def artifact(job_id: str, name: str) -> Call[bytes]:
    """`GET /jobs/{id}/artifacts/{name}`: the artifact's raw bytes."""
    return Call("GET", _job_path(job_id, "artifacts", name), _content)


def fetch_completion(job: JobView) -> Call[str] | None:
    """`GET` of the job's `completion` artifact as text, when it was too large to come inline;
    None when there is nothing to fetch (`job.completion` is the answer)."""
    found = job.artifact("completion")
    if found is None or found.inline or not found.url:
        return None
    path = _job_path(job.job_id, "artifacts", "completion")
    return Call("GET", path, lambda response: _content(response).decode(errors="replace"))


def document(path: str) -> Call[dict[str, Any]]:
    """`GET path` of a route that answers one JSON object (`/queue`, `/api/ps`)."""
    return Call("GET", path, _object)


def health() -> Call[dict[str, Any]]:
    """`GET /healthz`: `status` and `degraded`, also when they come with an error status."""
    return Call("GET", "/healthz", _health)


# -- calls repeated: pages, polls ------------------------------------------------------------


class Pages:
    """A walk through `GET /jobs`, page by page along the cursors, stopping after `limit`."""

    def __init__(
        self, state: str | None, model: str | None, limit: int | None, page_size: int
    ) -> None:
        self._state, self._model, self._page_size = state, model, page_size
        self._remaining = limit
        self._cursor: str | None = None
        self._done = False

    def next_call(self) -> Call[JobListing] | None:
        """The call for the next page; None when the walk is over."""
        if self._done or (self._remaining is not None and self._remaining <= 0):
            return None
        size = self._page_size if self._remaining is None else min(self._page_size, self._remaining)
        return list_jobs(self._state, self._model, size, self._cursor)

    def take(self, page: JobListing) -> list[JobView]:
        """The jobs of `page` the walk yields; it moves on to the next page, if any."""
        jobs = page.jobs if self._remaining is None else page.jobs[: self._remaining]
        if self._remaining is not None:
            self._remaining -= len(jobs)
        self._done = not page.next_cursor or not page.jobs
        self._cursor = page.next_cursor
        return jobs


class Poll:
    """A `wait` under way: its deadline, and the view of the job last seen."""

    def __init__(self, timeout: float | None, interval: float) -> None:
        self._timeout, self._interval = timeout, interval
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._last: JobView | None = None

    def changed(self, job: JobView) -> bool:
        """Whether `job` differs from the view seen before it (none: it does)."""
        changed, self._last = job != self._last, job
        return changed

    def pause(self, job: JobView) -> float:
        """How long to sleep before the next poll; raises ForemanTimeout when time is up."""
        if self._deadline is None or self._timeout is None:
            return self._interval
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ForemanTimeout(job, self._timeout)
        return min(self._interval, remaining)


# -- reading answers ---------------------------------------------------------------------------


def _job_path(job_id: str, *rest: str) -> str:
    if not job_id or not job_id.strip():
        raise ValueError("job id is empty")
    # Quoting keeps an id like "../queue" from naming another route.
    return "/".join(["/jobs", *(quote(part, safe="") for part in (job_id, *rest))])


def _job(response: httpx.Response) -> JobView:
    return JobView.from_json(_object(response))


def _listing(response: httpx.Response) -> JobListing:
    return JobListing.from_json(_object(response))


def _content(response: httpx.Response) -> bytes:
    return _checked(response).content


def _submitted_id(response: httpx.Response) -> str:
    job_id = _object(response).get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(response.status_code, "foreman accepted the job but sent no job_id")
    return job_id


def _checked(response: httpx.Response) -> httpx.Response:
    """The response when it is a success; otherwise the ApiError it stands for."""
    if response.is_success:
        return response
    status, message = response.status_code, _error_message(response)
    if status == 503:
        raise QueueFullError(status, message, _retry_after(response))
    raise ERRORS_BY_STATUS.get(status, ApiError)(status, message)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error:
        return error
    text = response.text.strip()
    if text and len(text) <= 200 and "\n" not in text:
        return text
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; otherwise the ApiError it stands for."""
    _checked(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiError(response.status_code, "foreman answered with something not JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(response.status_code, "foreman answered with JSON that is not an object")
    return body


def _health(response: httpx.Response) -> dict[str, Any]:
    # A sick server may report its health with an error status: a status object still counts.
    if not response.is_success:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "status" in body:
            return body
    return _object(response)


def _reason(exc: httpx.TransportError) -> str:
    """A short human reason for a failed connection."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if any(
        hint in lowered
        for hint in ("name or service not known", "nodename nor servname", "name resolution")
    ):
        return "unknown host"
    return text
