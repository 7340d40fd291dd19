"""POST /api/chat and /api/generate: Ollama requests that wait their turn in the durable queue.

Ordinary Litestar handlers behind the app's bearer-token middleware, body limit and exception
handlers. The handler reads the raw body: it goes to Ollama exactly as the client sent it, and it
is JSON whatever its Content-Type. `ChatRequest` and `GenerateRequest` describe it in the OpenAPI
description (`openapi.documented_body`) without Litestar decoding it.

A client that leaves cancels its job: one still queued never runs, one running has its request to
Ollama aborted. Until the answer starts, a task watches the connection for that; once a stream has
started, Litestar's `Stream` does, and the stream's background task cancels a job whose body did
not go out whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from litestar import Controller, Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.response import Stream
from litestar.types import Receive

from foreman_app.live import LiveResponse, ResponseFailed
from foreman_app.openapi import documented_body
from foreman_app.requests import ChatRequest, GenerateRequest, ollama_request, request_body
from foreman_app.sync_jobs import SyncJobs
from foreman_core.job import CHAT, GENERATE
from foreman_core.worker import Worker

JOB_ID_HEADER = "X-Foreman-Job-Id"

Request_ = Request[Any, Any, Any]
T = TypeVar("T")

_ABORTS: set[asyncio.Task[None]] = set()
"""Cancellations of jobs whose clients left, still running."""


class QueuedInferenceController(Controller):
    """Ollama's chat and generate, each request queued as a sync job and answered live."""

    path = "/api"

    @post("/chat", status_code=200, operation_class=documented_body(ChatRequest))
    async def chat(self, request: Request_, sync_jobs: NamedDependency[SyncJobs]) -> Response[Any]:
        """Ollama's chat, queued as a sync job; the target's answer relayed live."""
        return await answer(CHAT, request, sync_jobs)

    @post("/generate", status_code=200, operation_class=documented_body(GenerateRequest))
    async def generate(
        self, request: Request_, sync_jobs: NamedDependency[SyncJobs]
    ) -> Response[Any]:
        """Ollama's generate, queued as a sync job; the target's answer relayed live."""
        return await answer(GENERATE, request, sync_jobs)


async def answer(kind: str, request: Request_, sync_jobs: SyncJobs) -> Response[Any]:
    """Admit the request's body as a sync job of `kind` and answer with the target's response:
    whole for `stream: false` or a failure before the body, else a stream, with the job's id."""
    body = await request_body(request)
    fields = ollama_request(body)
    job, live = await sync_jobs.admit(kind, body, fields)
    worker = sync_jobs.worker
    streamed = fields.get("stream", True) is not False
    if streamed:
        outcome, whole = (
            await _while_connected(request.receive, live, worker, job.id, live.start()),
            b"",
        )
    else:
        outcome, whole = await _while_connected(
            request.receive, live, worker, job.id, live.complete()
        )
    headers = {"content-type": outcome.content_type, JOB_ID_HEADER: job.id}
    if isinstance(outcome, ResponseFailed) or not streamed:
        _release(live, worker, job.id)
        content = outcome.body if isinstance(outcome, ResponseFailed) else whole
        return Response(content, status_code=outcome.status, headers=headers)
    relay = _Relay(live, worker, job.id)
    return Stream(
        relay.chunks(),
        status_code=outcome.status,
        headers=headers,
        background=BackgroundTask(relay.finish),
    )


async def _while_connected(
    receive: Receive, live: LiveResponse, worker: Worker, job_id: str, wait: Awaitable[T]
) -> T:
    """`wait`'s result, awaited while a task watches for the client leaving (which cancels the
    job, and so ends `wait`)."""
    loop = asyncio.get_running_loop()
    watch = loop.create_task(_cancel_when_client_leaves(receive, worker, job_id))
    try:
        return await wait
    except BaseException:
        _release(live, worker, job_id)
        _abort_in_background(worker, job_id)
        raise
    finally:
        watch.cancel()


async def _cancel_when_client_leaves(receive: Receive, worker: Worker, job_id: str) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    _abort_in_background(worker, job_id)


class _Relay:
    """A started answer's body, each chunk as the worker hands it over."""

    def __init__(self, live: LiveResponse, worker: Worker, job_id: str) -> None:
        self._live = live
        self._worker = worker
        self._job_id = job_id
        self._whole = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body; iteration ends early (cancelled) when the client leaves."""
        async for chunk in self._live.chunks():
            yield chunk
        self._whole = True

    async def finish(self) -> None:
        """After the response, or after the client left: cancel the job unless the body went
        out whole."""
        _release(self._live, self._worker, self._job_id)
        if not self._whole:
            await _cancel_quietly(self._worker, self._job_id)


def _release(live: LiveResponse, worker: Worker, job_id: str) -> None:
    """The handler is done with the job's response: the worker stops feeding it, and what it
    still holds is dropped."""
    live.abandon()
    worker.forget(job_id)


def _abort_in_background(worker: Worker, job_id: str) -> None:
    """Cancel the job in a task of its own, held until it ends (the loop keeps only a weak
    reference to a task): the caller may be cancelled before the cancellation is through."""
    abort = asyncio.get_running_loop().create_task(_cancel_quietly(worker, job_id))
    _ABORTS.add(abort)
    abort.add_done_callback(_ABORTS.discard)


async def _cancel_quietly(worker: Worker, job_id: str) -> None:
    with contextlib.suppress(Exception):  # finished meanwhile, or never stored
        await worker.cancel(job_id)


QUEUED_ROUTES = [QueuedInferenceController]
"""Every route of this module, for `create_app`."""
