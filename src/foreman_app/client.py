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
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from foreman_app import client_calls as calls
from foreman_app.client_calls import (
    DEFAULT_URL,
    Call,
    Kind,
    auth_headers,
    auth_token,
    base_url,
    reaching,
    submission_body,
)
from foreman_app.client_errors import (
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
from foreman_app.client_views import FINISHED_STATES, ArtifactView, JobListing, JobView
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

T = TypeVar("T")


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
            headers=auth_headers(auth_token(token)),
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
        return self._send(calls.submit(body, idempotency_key))

    def get(self, job_id: str) -> JobView:
        """The job; raises NotFound."""
        return self._send(calls.get(job_id))

    def list(
        self,
        state: str | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobListing:
        """One page of jobs, newest first, filtered by state and model."""
        return self._send(calls.list_jobs(state, model, limit, cursor))

    def iter_jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[JobView]:
        """Every matching job, newest first, following cursors; at most `limit` when given."""
        pages = calls.Pages(state, model, limit, page_size)
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._send(call))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[JobView], object] | None = None,
    ) -> JobView:
        """Poll until the job is done, failed or cancelled and return it; `on_update` sees each
        view that differs from the one before. Raises ForemanTimeout after `timeout` seconds."""
        poll = calls.Poll(timeout, poll_interval)
        while True:
            job = self.get(job_id)
            if on_update is not None and poll.changed(job):
                on_update(job)
            if job.finished:
                return job
            time.sleep(poll.pause(job))

    def cancel(self, job_id: str) -> JobView:
        """Cancel the job and return it; raises Conflict when it has already finished."""
        return self._send(calls.cancel(job_id))

    def artifact(self, job_id: str, name: str) -> bytes:
        """The raw bytes of one artifact of the job; raises NotFound."""
        return self._send(calls.artifact(job_id, name))

    def completion(self, job: JobView) -> str | None:
        """The job's generated text, fetched when it was too large to come inline."""
        fetch = calls.fetch_completion(job)
        if fetch is None:
            return job.completion
        return self._send(fetch)

    def queue(self) -> dict[str, Any]:
        """What runs now and what waits (`GET /queue`)."""
        return self._send(calls.document("/queue"))

    def ps(self) -> dict[str, Any]:
        """The models resident on the target, in Ollama's shape (`GET /api/ps`)."""
        return self._send(calls.document("/api/ps"))

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: `status` and whether the target is unreachable (`degraded`)."""
        return self._send(calls.health())

    def _send(self, call: Call[T]) -> T:
        with reaching(self.url):
            response = self._http.send(call.build(self._http))
        return call.read(response)


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
            headers=auth_headers(auth_token(token)),
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
        return await self._send(calls.submit(body, idempotency_key))

    async def get(self, job_id: str) -> JobView:
        """The job; raises NotFound."""
        return await self._send(calls.get(job_id))

    async def list(
        self,
        state: str | None = None,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobListing:
        """One page of jobs, newest first, filtered by state and model."""
        return await self._send(calls.list_jobs(state, model, limit, cursor))

    async def iter_jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[JobView]:
        """Every matching job, newest first, following cursors; at most `limit` when given."""
        pages = calls.Pages(state, model, limit, page_size)
        while (call := pages.next_call()) is not None:
            for job in pages.take(await self._send(call)):
                yield job

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[JobView], object | Awaitable[object]] | None = None,
    ) -> JobView:
        """Poll until the job is done, failed or cancelled and return it; `on_update` (plain or
        async) sees each view that differs from the one before. Raises ForemanTimeout."""
        poll = calls.Poll(timeout, poll_interval)
        while True:
            job = await self.get(job_id)
            if on_update is not None and poll.changed(job):
                outcome = on_update(job)
                if inspect.isawaitable(outcome):
                    await outcome
            if job.finished:
                return job
            await asyncio.sleep(poll.pause(job))

    async def cancel(self, job_id: str) -> JobView:
        """Cancel the job and return it; raises Conflict when it has already finished."""
        return await self._send(calls.cancel(job_id))

    async def artifact(self, job_id: str, name: str) -> bytes:
        """The raw bytes of one artifact of the job; raises NotFound."""
        return await self._send(calls.artifact(job_id, name))

    async def completion(self, job: JobView) -> str | None:
        """The job's generated text, fetched when it was too large to come inline."""
        fetch = calls.fetch_completion(job)
        if fetch is None:
            return job.completion
        return await self._send(fetch)

    async def queue(self) -> dict[str, Any]:
        """What runs now and what waits (`GET /queue`)."""
        return await self._send(calls.document("/queue"))

    async def ps(self) -> dict[str, Any]:
        """The models resident on the target, in Ollama's shape (`GET /api/ps`)."""
        return await self._send(calls.document("/api/ps"))

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`: `status` and whether the target is unreachable (`degraded`)."""
        return await self._send(calls.health())

    async def _send(self, call: Call[T]) -> T:
        with reaching(self.url):
            response = await self._http.send(call.build(self._http))
        return call.read(response)
