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
from foreman_core.job import CHAT, GENERATE
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

    Once the job is admitted the handler returns at once an ASGI app that waits for the
    answer and sends it: Litestar's own work after a handler is done while the target works,
    not between its answer and the client. The app is bare, not a Litestar response: a few
    header bytes around the target's body, and Litestar's machinery for them (a Response, and
    for a stream a task group watching for the client to leave) cost 100-200 us a request
    (ADR 0015).
    """
    body = await request.body()
    fields = ollama_request(body)
    job, live = await sync_jobs.admit(KIND_OF_ROUTE[request.url.path], body, fields)
    return _Answer(job.id, live, sync_jobs.worker, streamed=fields.get("stream", True) is not False)


class _Answer:
    """The job's answer, sent the moment the worker hands it over: whole for `stream: false`
    or a failure before the body, else chunk by chunk. A client that goes away cancels the job
    (one queued never runs, one running has its upstream request aborted)."""

    def __init__(self, job_id: str, live: LiveResponse, worker: Worker, *, streamed: bool) -> None:
        self._job_id = job_id
        self._live = live
        self._worker = worker
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = asyncio.get_running_loop().create_task(self._cancel_when_client_leaves(receive))
        answered = False
        try:
            await self._answer(send)
            answered = True
        finally:
            watch.cancel()
            self._worker.forget(self._job_id)
            if not answered:
                _abort_in_background(self._worker, self._job_id)

    async def _answer(self, send: Send) -> None:
        if self._streamed:
            outcome, body = await self._live.start(), b""
        else:
            outcome, body = await self._live.complete()
        if isinstance(outcome, ResponseFailed):
            body = outcome.body
        if isinstance(outcome, ResponseFailed) or not self._streamed:
            await send(_response_start(outcome.status, outcome.content_type, self._job_id, body))
            await send({"type": "http.response.body", "body": body})
            return
        await send(_response_start(outcome.status, outcome.content_type, self._job_id, None))
        async for chunk in self._live.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _cancel_when_client_leaves(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        _abort_in_background(self._worker, self._job_id)


def _response_start(status: int, content_type: str, job_id: str, body: bytes | None) -> Any:
    """The start of an answer with `body` (None: chunked, its length unknown)."""
    headers = [(b"content-type", content_type.encode("latin-1"))]
    if body is not None:
        headers.append((b"content-length", b"%d" % len(body)))
    headers.append((JOB_ID_HEADER_BYTES, job_id.encode("ascii")))
    return {"type": "http.response.start", "status": status, "headers": headers}


def _abort_in_background(worker: Worker, job_id: str) -> None:
    """Cancel the job in a task of its own, held until it ends (the loop keeps only a weak
    reference to a task): the caller may be in a cancelled scope, or about to be cancelled."""
    abort = asyncio.get_running_loop().create_task(_cancel_quietly(worker, job_id))
    _ABORTS.add(abort)
    abort.add_done_callback(_ABORTS.discard)


async def _cancel_quietly(worker: Worker, job_id: str) -> None:
    with contextlib.suppress(Exception):
        await worker.cancel(job_id)
