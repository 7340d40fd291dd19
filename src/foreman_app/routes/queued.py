"""POST /api/chat and /api/generate: Ollama requests that wait their turn in the durable queue."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send

from foreman_app.requests import ollama_request
from foreman_app.sync_jobs import SyncJobs
from foreman_core.job import CHAT, GENERATE, Job
from foreman_core.worker import LiveResponse, ResponseFailed, Worker

JOB_ID_HEADER = "X-Foreman-Job-Id"
JOB_ID_HEADER_BYTES = JOB_ID_HEADER.lower().encode("ascii")

_ABORTS: set[asyncio.Task[None]] = set()
"""Cancellations of jobs whose clients left, still running."""


KIND_OF_ROUTE = {"/api/chat": CHAT, "/api/generate": GENERATE}


@post(list(KIND_OF_ROUTE), status_code=200)
async def queued_inference(
    request: Request[Any, Any, Any], sync_jobs: NamedDependency[SyncJobs]
) -> ASGIApp:
    """Ollama's chat and generate, queued as sync jobs; the target's answer relayed live.

    The answers are bare ASGI apps rather than Litestar responses: each is a few header bytes
    around the target's body, and Litestar's machinery for them (a Response, and for a stream
    a task group watching for the client to leave) cost 100-200 us a request (ADR 0015). One
    task watches for the client leaving instead.
    """
    body = await request.body()
    fields = ollama_request(body)
    job, live = await sync_jobs.admit(KIND_OF_ROUTE[request.url.path], body, fields)
    worker = sync_jobs.worker
    watch = asyncio.get_running_loop().create_task(_cancel_when_client_leaves(request, job, worker))
    streamed = fields.get("stream", True) is not False
    try:
        if streamed:
            answer, data = await live.start(), b""
        else:
            answer, data = await live.complete()
    except BaseException:
        watch.cancel()
        raise
    if isinstance(answer, ResponseFailed) or not streamed:
        watch.cancel()
        worker.forget(job.id)
        if isinstance(answer, ResponseFailed):
            data = answer.body
        return _Whole(answer.status, answer.content_type, job.id, data)
    return _Relay(answer.status, answer.content_type, job.id, live, worker, watch)


class _Whole:
    """An answer sent whole: status, content type and the job's id around `body`."""

    def __init__(self, status: int, content_type: str, job_id: str, body: bytes) -> None:
        self._start = _response_start(status, content_type, job_id, len(body))
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)  # type: ignore[arg-type]
        await send(self._body)  # type: ignore[arg-type]


class _Relay:
    """The target's chunks as they come; a client that goes away aborts the upstream request
    (`watch` sees it leave and cancels the job; a failed send does the same)."""

    def __init__(
        self,
        status: int,
        content_type: str,
        job_id: str,
        live: LiveResponse,
        worker: Worker,
        watch: asyncio.Task[None],
    ) -> None:
        self._start = _response_start(status, content_type, job_id, None)
        self._job_id = job_id
        self._live = live
        self._worker = worker
        self._watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            await send(self._start)  # type: ignore[arg-type]
            async for chunk in self._live.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
        finally:
            self._watch.cancel()
            self._worker.forget(self._job_id)
            if not finished:
                _abort_in_background(self._worker, self._job_id)


def _response_start(
    status: int, content_type: str, job_id: str, length: int | None
) -> dict[str, Any]:
    headers = [(b"content-type", content_type.encode("latin-1"))]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    headers.append((JOB_ID_HEADER_BYTES, job_id.encode("ascii")))
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _cancel_when_client_leaves(
    request: Request[Any, Any, Any], job: Job, worker: Worker
) -> None:
    """Until cancelled, wait for the client to go away; then cancel its job: one queued never
    runs, one running has its upstream request aborted. The handler then answers nobody."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    _abort_in_background(worker, job.id)


def _abort_in_background(worker: Worker, job_id: str) -> None:
    """Cancel the job in a task of its own, held until it ends (the loop keeps only a weak
    reference to a task): the caller may be in a cancelled scope, or about to be cancelled."""
    abort = asyncio.get_running_loop().create_task(_cancel_quietly(worker, job_id))
    _ABORTS.add(abort)
    abort.add_done_callback(_ABORTS.discard)


async def _cancel_quietly(worker: Worker, job_id: str) -> None:
    with contextlib.suppress(Exception):
        await worker.cancel(job_id)
