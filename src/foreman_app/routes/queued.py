"""POST /api/chat and /api/generate: Ollama requests that wait their turn in the durable queue."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Request, post
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ASGIApp, ExceptionHandlersMap, Receive, Scope, Send

from foreman_app.auth import is_authorized
from foreman_app.errors import error_response_for
from foreman_app.live import LiveResponse, ResponseFailed
from foreman_app.requests import ollama_request
from foreman_app.sync_jobs import SyncJobs
from foreman_core.job import CHAT, GENERATE
from foreman_core.worker import Worker

JOB_ID_HEADER = "X-Foreman-Job-Id"
JOB_ID_HEADER_BYTES = JOB_ID_HEADER.lower().encode("ascii")

_ABORTS: set[asyncio.Task[None]] = set()
"""Cancellations of jobs whose clients left, still running."""


CHAT_PATH, GENERATE_PATH = "/api/chat", "/api/generate"
KIND_OF_PATH = {CHAT_PATH: CHAT, GENERATE_PATH: GENERATE}


class QueuedRoutes:
    """`POST /api/chat` and `/api/generate`, served ahead of Litestar's router (ADR 0016).

    Litestar's routing, request and response machinery costs about 150 us of a cold CPU per
    request, as much as all of foreman's own work before the request goes out. The app
    (`ForemanApp`) hands these two routes' requests straight to this lane, which does what
    Litestar would: checks the bearer token, reads the body within FOREMAN_MAX_BODY_SIZE,
    admits the job and answers; an error before the answer becomes the response Litestar's
    exception handlers give for it. The routes stay declared in Litestar (`chat`, `generate`)
    for the OpenAPI description; a request that reaches them is handed back to this lane.
    """

    def __init__(
        self,
        sync_jobs: Callable[[], SyncJobs],
        *,
        auth_tokens: Sequence[str],
        max_body_size: int,
        error_handlers: ExceptionHandlersMap,
    ) -> None:
        self._sync_jobs = sync_jobs
        self._auth_tokens = tuple(auth_tokens)
        self._max_body_size = max_body_size
        self._error_handlers = error_handlers

    @staticmethod
    def kind_of(scope: Scope) -> str | None:
        """The job kind of a request this lane serves, None for any other."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        return KIND_OF_PATH.get(scope["path"])

    async def __call__(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if not is_authorized(scope, self._auth_tokens):
                raise NotAuthorizedException("unauthorized")
            answer = await self._admit(kind, scope, receive)
        except Exception as exc:
            request: Request[Any, Any, Any] = Request(scope, receive)
            response = error_response_for(self._error_handlers, request, exc)
            await response.to_asgi_response(None, request)(scope, receive, send)
            return
        if answer is not None:
            await answer(receive, send)

    async def _admit(self, kind: str, scope: Scope, receive: Receive) -> _Answer | None:
        """Read the request's body (413 past the limit), check it (400) and admit it as a sync
        job of `kind` (404 for an unknown model, 503 when the queue is full); the answer to
        send, or None if the client left before it had sent its request."""
        body = await _read_body(scope, receive, self._max_body_size)
        if body is None:
            return None
        fields = ollama_request(body)
        sync_jobs = self._sync_jobs()
        job, live = await sync_jobs.admit(kind, body, fields)
        streamed = fields.get("stream", True) is not False
        return _Answer(job.id, live, sync_jobs.worker, streamed=streamed)


@post(CHAT_PATH, status_code=200)
async def chat(scope: Scope) -> ASGIApp:
    """Ollama's chat, queued as a sync job; the target's answer relayed live."""
    return _lane(scope, CHAT)


@post(GENERATE_PATH, status_code=200)
async def generate(scope: Scope) -> ASGIApp:
    """Ollama's generate, queued as a sync job; the target's answer relayed live."""
    return _lane(scope, GENERATE)


def _lane(scope: Scope, kind: str) -> ASGIApp:
    """The app's `QueuedRoutes`, for a request that reached Litestar's router all the same
    (`/api/chat/`, say): one way of serving these routes, whichever way a request came."""
    lane: QueuedRoutes = scope["litestar_app"].queued_routes
    return functools.partial(lane, kind)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None if the client left first; a 413 when it is longer than
    `limit`, checked as Litestar checks it: the announced length, then the bytes received."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large()
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large()
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


class _Answer:
    """The answer of an admitted job, sent the moment the worker hands it over: whole for
    `stream: false` or a failure before the body, else chunk by chunk. A client that goes away
    cancels the job (one queued never runs, one running has its upstream request aborted)."""

    def __init__(self, job_id: str, live: LiveResponse, worker: Worker, *, streamed: bool) -> None:
        self._job_id = job_id
        self._live = live
        self._worker = worker
        self._streamed = streamed

    async def __call__(self, receive: Receive, send: Send) -> None:
        watch = asyncio.get_running_loop().create_task(self._cancel_when_client_leaves(receive))
        answered = False
        try:
            await self._answer(send)
            answered = True
        finally:
            watch.cancel()
            self._live.abandon()
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


def _too_large() -> ClientException:
    return ClientException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)


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
