"""foreman's Python client: submit jobs, watch them, fetch what they produced.

    from foreman_app.client import ForemanClient

    with ForemanClient() as foreman:  # FOREMAN_URL and FOREMAN_AUTH_TOKEN, if set
        job_id = foreman.submit("llama3.2", "Why is the sky blue?")
        job = foreman.wait(job_id)
        print(foreman.completion(job))

`AsyncForemanClient` has the same methods as coroutines. Every failure is a `ClientError`
(the tree is drawn in `foreman_app.client_errors`). Webhook receivers check signatures with
`verify_signature`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from foreman_app.client_errors import (
    ERRORS_BY_STATUS,
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    ForemanTimeout,
    NotFound,
    QueueFullError,
    ServerUnreachable,
    Unauthorized,
)
from foreman_core.signing import verify_signature

__all__ = [
    "DEFAULT_URL",
    "FINISHED_STATES",
    "ApiError",
    "ArtifactView",
    "AsyncForemanClient",
    "BadRequest",
    "ClientError",
    "Conflict",
    "ForemanClient",
    "ForemanTimeout",
    "JobListing",
    "JobView",
    "NotFound",
    "QueueFullError",
    "ServerUnreachable",
    "Unauthorized",
    "verify_signature",
]

DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})
"""Job states no transition leaves."""

Kind = Literal["chat", "generate"]


@dataclass(frozen=True, slots=True)
class ArtifactView:
    """One artifact of a job as the server describes it: inline `data`, or a `url` to fetch."""

    name: str
    content_type: str
    size: int | None = None
    data: str | None = None
    encoding: str | None = None
    url: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ArtifactView:
        """The view of one entry of a job's `artifacts` list."""
        return cls(
            name=str(obj.get("name", "")),
            content_type=str(obj.get("content_type", "application/octet-stream")),
            size=_int_or_none(obj.get("size")),
            data=_str_or_none(obj.get("data")),
            encoding=_str_or_none(obj.get("encoding")),
            url=_str_or_none(obj.get("url")),
        )

    @property
    def inline(self) -> bool:
        """True when the content came with the job; False when it must be fetched by `url`."""
        return self.data is not None

    def content(self) -> bytes | None:
        """The inline bytes (base64-decoded when so encoded); None when only a `url` is given."""
        if self.data is None:
            return None
        if self.encoding == "base64":
            try:
                return base64.b64decode(self.data)
            except (binascii.Error, ValueError):
                return None
        return self.data.encode()


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the server reported it (`GET /jobs/{id}`); `raw` is the JSON object itself."""

    job_id: str
    kind: str
    model: str
    state: str
    priority: int = 0
    attempts: int = 0
    queue_position: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    artifacts: list[ArtifactView] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobView:
        """The view of a job object; fields the server left out take their empty value."""
        result = obj.get("result")
        return cls(
            job_id=str(obj.get("job_id", "")),
            kind=str(obj.get("kind", "chat")),
            model=str(obj.get("model", "")),
            state=str(obj.get("state", "")),
            priority=_int_or_none(obj.get("priority")) or 0,
            attempts=_int_or_none(obj.get("attempts")) or 0,
            queue_position=_int_or_none(obj.get("queue_position")),
            created_at=_timestamp(obj.get("created_at")),
            started_at=_timestamp(obj.get("started_at")),
            finished_at=_timestamp(obj.get("finished_at")),
            error=_str_or_none(obj.get("error")),
            result=result if isinstance(result, dict) else None,
            artifacts=[
                ArtifactView.from_json(item)
                for item in obj.get("artifacts") or []
                if isinstance(item, Mapping)
            ],
            raw=dict(obj),
        )

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self.state in FINISHED_STATES

    def artifact(self, name: str) -> ArtifactView | None:
        """The artifact of this name, if the job has one."""
        return next((item for item in self.artifacts if item.name == name), None)

    @property
    def completion(self) -> str | None:
        """The generated text when it is at hand: the inline `completion` artifact, else the
        text of `result`. None before the job is done (use `client.completion(job)` to fetch
        a completion too large to be inlined)."""
        artifact = self.artifact("completion")
        content = artifact.content() if artifact is not None else None
        if content is not None:
            return content.decode("utf-8", errors="replace")
        return _result_text(self.result)


@dataclass(frozen=True, slots=True)
class JobListing:
    """One page of `GET /jobs`, newest first; `next_cursor` is None on the last page."""

    jobs: list[JobView]
    next_cursor: str | None = None


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


class ForemanClient:
    """A blocking client of foreman's native routes (`/jobs`, `/queue`, `/healthz`, `/api/ps`)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = base_url(url)
        self._http = httpx.Client(
            base_url=self.url,
            headers=_auth_headers(auth_token(token)),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> ForemanClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        kind: Kind = "chat",
        webhook: str | None = None,
        priority: int = 0,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> str:
        """Queue a job and return its id; `extra` fields (format, tools, think, …) go to Ollama."""
        body = submission_body(
            model,
            prompt,
            messages=messages,
            system=system,
            kind=kind,
            webhook=webhook,
            priority=priority,
            options=options,
            **extra,
        )
        response = self._send("POST", "/jobs", json=body, headers=_idempotency(idempotency_key))
        return _submitted_id(response)

    def get(self, job_id: str) -> JobView:
        """The job; raises NotFound."""
        return JobView.from_json(_object(self._send("GET", _job_path(job_id))))

    def list(
        self,
        state: str | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobListing:
        """One page of jobs, newest first, filtered by state and model."""
        params = _listing_params(state, model, limit, cursor)
        return _listing(_object(self._send("GET", "/jobs", params=params)))

    def iter_jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[JobView]:
        """Every matching job, newest first, following cursors; at most `limit` when given."""
        cursor: str | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page = self.list(state, model, limit=size, cursor=cursor)
            jobs = page.jobs if remaining is None else page.jobs[:remaining]
            yield from jobs
            remaining = None if remaining is None else remaining - len(jobs)
            if not page.next_cursor or not page.jobs:
                return
            cursor = page.next_cursor

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[JobView], object] | None = None,
    ) -> JobView:
        """Poll until the job is done, failed or cancelled and return it; `on_update` sees each
        view that differs from the one before. Raises ForemanTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JobView | None = None
        while True:
            job = self.get(job_id)
            if on_update is not None and job != last:
                on_update(job)
            last = job
            if job.finished:
                return job
            time.sleep(_pause(job, deadline, timeout, poll_interval))

    def cancel(self, job_id: str) -> JobView:
        """Cancel the job and return it; raises Conflict when it has already finished."""
        return JobView.from_json(_object(self._send("DELETE", _job_path(job_id))))

    def artifact(self, job_id: str, name: str) -> bytes:
        """The raw bytes of one artifact of the job; raises NotFound."""
        return self._send("GET", _job_path(job_id, "artifacts", name)).content

    def completion(self, job: JobView) -> str | None:
        """The job's generated text, fetched when it was too large to come inline."""
        artifact = job.artifact("completion")
        if artifact is not None and not artifact.inline and artifact.url:
            return self.artifact(job.job_id, "completion").decode("utf-8", errors="replace")
        return job.completion

    def queue(self) -> dict[str, Any]:
        """What runs now and what waits (`GET /queue`)."""
        return _object(self._send("GET", "/queue"))

    def ps(self) -> dict[str, Any]:
        """The models resident on the target, in Ollama's shape (`GET /api/ps`)."""
        return _object(self._send("GET", "/api/ps"))

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: `status` and whether the target is unreachable (`degraded`)."""
        return _health(self._send("GET", "/healthz", check=False))

    def _send(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        return _checked(response) if check else response


class AsyncForemanClient:
    """The asyncio twin of ForemanClient: the same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url(url)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_auth_headers(auth_token(token)),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncForemanClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        kind: Kind = "chat",
        webhook: str | None = None,
        priority: int = 0,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> str:
        """Queue a job and return its id; `extra` fields (format, tools, think, …) go to Ollama."""
        body = submission_body(
            model,
            prompt,
            messages=messages,
            system=system,
            kind=kind,
            webhook=webhook,
            priority=priority,
            options=options,
            **extra,
        )
        headers = _idempotency(idempotency_key)
        return _submitted_id(await self._send("POST", "/jobs", json=body, headers=headers))

    async def get(self, job_id: str) -> JobView:
        """The job; raises NotFound."""
        return JobView.from_json(_object(await self._send("GET", _job_path(job_id))))

    async def list(
        self,
        state: str | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobListing:
        """One page of jobs, newest first, filtered by state and model."""
        params = _listing_params(state, model, limit, cursor)
        return _listing(_object(await self._send("GET", "/jobs", params=params)))

    async def iter_jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[JobView]:
        """Every matching job, newest first, following cursors; at most `limit` when given."""
        cursor: str | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page = await self.list(state, model, limit=size, cursor=cursor)
            jobs = page.jobs if remaining is None else page.jobs[:remaining]
            for job in jobs:
                yield job
            remaining = None if remaining is None else remaining - len(jobs)
            if not page.next_cursor or not page.jobs:
                return
            cursor = page.next_cursor

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[JobView], object | Awaitable[object]] | None = None,
    ) -> JobView:
        """Poll until the job is done, failed or cancelled and return it; `on_update` (plain or
        async) sees each view that differs from the one before. Raises ForemanTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JobView | None = None
        while True:
            job = await self.get(job_id)
            if on_update is not None and job != last:
                outcome = on_update(job)
                if inspect.isawaitable(outcome):
                    await outcome
            last = job
            if job.finished:
                return job
            await asyncio.sleep(_pause(job, deadline, timeout, poll_interval))

    async def cancel(self, job_id: str) -> JobView:
        """Cancel the job and return it; raises Conflict when it has already finished."""
        return JobView.from_json(_object(await self._send("DELETE", _job_path(job_id))))

    async def artifact(self, job_id: str, name: str) -> bytes:
        """The raw bytes of one artifact of the job; raises NotFound."""
        return (await self._send("GET", _job_path(job_id, "artifacts", name))).content

    async def completion(self, job: JobView) -> str | None:
        """The job's generated text, fetched when it was too large to come inline."""
        artifact = job.artifact("completion")
        if artifact is not None and not artifact.inline and artifact.url:
            content = await self.artifact(job.job_id, "completion")
            return content.decode("utf-8", errors="replace")
        return job.completion

    async def queue(self) -> dict[str, Any]:
        """What runs now and what waits (`GET /queue`)."""
        return _object(await self._send("GET", "/queue"))

    async def ps(self) -> dict[str, Any]:
        """The models resident on the target, in Ollama's shape (`GET /api/ps`)."""
        return _object(await self._send("GET", "/api/ps"))

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`: `status` and whether the target is unreachable (`degraded`)."""
        return _health(await self._send("GET", "/healthz", check=False))

    async def _send(
        self, method: str, path: str, *, check: bool = True, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        return _checked(response) if check else response


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _idempotency(key: str | None) -> dict[str, str] | None:
    return {"Idempotency-Key": key} if key else None


def _job_path(job_id: str, *rest: str) -> str:
    if not job_id or not job_id.strip():
        raise ValueError("job id is empty")
    # Quoting keeps an id like "../queue" from naming another route.
    return "/".join(["/jobs", *(quote(part, safe="") for part in (job_id, *rest))])


def _listing_params(
    state: str | None, model: str | None, limit: int, cursor: str | None
) -> dict[str, str | int]:
    params: dict[str, str | int] = {"limit": limit}
    for name, value in (("state", state), ("model", model), ("cursor", cursor)):
        if value is not None:
            params[name] = value
    return params


def _listing(obj: dict[str, Any]) -> JobListing:
    jobs = [JobView.from_json(item) for item in obj.get("jobs") or [] if isinstance(item, dict)]
    return JobListing(jobs=jobs, next_cursor=_str_or_none(obj.get("next_cursor")))


def _submitted_id(response: httpx.Response) -> str:
    job_id = _object(response).get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(response.status_code, "foreman accepted the job but sent no job_id")
    return job_id


def _pause(job: JobView, deadline: float | None, timeout: float | None, interval: float) -> float:
    """How long to sleep before the next poll; raises ForemanTimeout when time is up."""
    if deadline is None or timeout is None:
        return interval
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ForemanTimeout(job, timeout)
    return min(interval, remaining)


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
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        return body["error"]
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
    return _object(_checked(response))


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


def _result_text(result: dict[str, Any] | None) -> str | None:
    if not result:
        return None
    message = result.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return message["content"]
    response = result.get("response")
    return response if isinstance(response, str) else None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
