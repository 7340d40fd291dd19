"""POST /api/chat and /api/generate: Ollama requests that wait their turn in the durable queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.response import Stream

from foreman_app.requests import ollama_request
from foreman_app.sync_jobs import SyncJobs
from foreman_core.job import CHAT, GENERATE, Job
from foreman_core.worker import LiveResponse, ResponseFailed, ResponseStarted, Worker

JOB_ID_HEADER = "X-Foreman-Job-Id"

_ABORTS: set[asyncio.Task[None]] = set()
"""Aborts of abandoned streams still running."""


KIND_OF_ROUTE = {"/api/chat": CHAT, "/api/generate": GENERATE}


@post(list(KIND_OF_ROUTE), status_code=200)
async def queued_inference(
    request: Request[Any, Any, Any], sync_jobs: NamedDependency[SyncJobs]
) -> Response[bytes]:
    """Ollama's chat and generate, queued as sync jobs; the target's answer relayed live."""
    body = await request.body()
    fields = ollama_request(body)
    job, live = await sync_jobs.admit(KIND_OF_ROUTE[request.url.path], body, fields)
    worker = sync_jobs.worker
    started = await _start_unless_disconnected(request, live, job, worker)
    if started is None:
        return Response(b"", status_code=499)
    headers = {JOB_ID_HEADER: job.id}
    if isinstance(started, ResponseFailed):
        worker.forget(job.id)
        return Response(
            started.body,
            status_code=started.status,
            media_type=started.content_type,
            headers=headers,
        )
    if fields.get("stream", True) is False:
        data = b"".join([chunk async for chunk in live.chunks()])
        worker.forget(job.id)
        return Response(
            data, status_code=started.status, media_type=started.content_type, headers=headers
        )
    return Stream(
        _relay(live, job, worker),
        status_code=started.status,
        media_type=started.content_type,
        headers=headers,
    )


async def _start_unless_disconnected(
    request: Request[Any, Any, Any], live: LiveResponse, job: Job, worker: Worker
) -> ResponseStarted | ResponseFailed | None:
    """Wait for the target's answer; if the client leaves first, cancel the job and say None."""
    answer = asyncio.ensure_future(live.start())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    with contextlib.suppress(Exception):
        await worker.cancel(job.id)
    worker.forget(job.id)
    return None


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _relay(live: LiveResponse, job: Job, worker: Worker) -> AsyncIterator[bytes]:
    """The target's chunks as they come; a client that goes away aborts the upstream request."""
    finished = False
    try:
        async for chunk in live.chunks():
            yield chunk
        finished = True
    finally:
        worker.forget(job.id)
        if not finished:
            # We may be inside a cancelled scope here: hand the abort to a task of its own,
            # held until it ends (the loop keeps only a weak reference to a task).
            abort = asyncio.get_running_loop().create_task(_cancel_quietly(worker, job.id))
            _ABORTS.add(abort)
            abort.add_done_callback(_ABORTS.discard)


async def _cancel_quietly(worker: Worker, job_id: str) -> None:
    with contextlib.suppress(Exception):
        await worker.cancel(job_id)
