"""The async job API: `/jobs` (submit, list, read, cancel, artifacts) and `GET /queue`.

The handlers read HTTP and shape responses; `AsyncJobs` does the work. `POST /jobs` answers 202
only once the store has made the job durable.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_409_CONFLICT,
)
from litestar.types import ControllerRouterHandler

from foreman_app.async_jobs import AsyncJobs
from foreman_app.errors import JSON, error_response
from foreman_app.requests import InvalidRequest, request_body
from foreman_app.submissions import parse_submission
from foreman_core.errors import InvalidTransition
from foreman_core.job import JobState

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_IDEMPOTENCY_KEY = 255
"""Longest Idempotency-Key accepted, in characters; keys are stored and indexed with the job."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
ALREADY_FINISHED = "job already finished"

Request_ = Request[Any, Any, Any]


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """`value` as compact JSON."""
    return Response(
        msgspec.json.encode(value), status_code=status, media_type=JSON, headers=headers or {}
    )


class JobsController(Controller):
    """`/jobs`: async jobs and their artifacts."""

    path = "/jobs"

    @post("/", status_code=HTTP_202_ACCEPTED)
    async def submit(self, request: Request_, jobs: NamedDependency[AsyncJobs]) -> Response[bytes]:
        """Queue a chat or generate job; 202 with its id once it is durably stored."""
        body = await request_body(request)
        submission = parse_submission(body)
        key = idempotency_key(request)
        job = await jobs.submit(submission, body, key)
        return json_response({"job_id": job.id}, HTTP_202_ACCEPTED, {"Location": f"/jobs/{job.id}"})

    @get("/")
    async def list_jobs(
        self, request: Request_, jobs: NamedDependency[AsyncJobs]
    ) -> Response[bytes]:
        """Jobs newest first, filtered by `state` and `model`, `limit` per page, `cursor` on."""
        query = request.query_params
        state = _state_filter(query.get("state"))
        limit = _limit(query.get("limit"))
        try:
            page = jobs.page(
                state=state,
                model=query.get("model") or None,
                limit=limit,
                cursor=query.get("cursor") or None,
            )
        except ValueError:
            raise InvalidRequest("cursor is not one this server gave out") from None
        return json_response(page)

    @get("/{job_id:str}")
    async def read(
        self, job_id: FromPath[str], jobs: NamedDependency[AsyncJobs]
    ) -> Response[bytes]:
        """The job object; 404 when there is no such job."""
        return json_response(jobs.job(job_id))

    @delete("/{job_id:str}", status_code=200)
    async def cancel(
        self, job_id: FromPath[str], jobs: NamedDependency[AsyncJobs]
    ) -> Response[bytes]:
        """Cancel: a queued job never runs, a running one is aborted; 409 once finished."""
        try:
            return json_response(await jobs.cancel(job_id))
        except InvalidTransition:
            return error_response(HTTP_409_CONFLICT, ALREADY_FINISHED)

    @get("/{job_id:str}/artifacts/{name:str}")
    async def artifact(
        self, job_id: FromPath[str], name: FromPath[str], jobs: NamedDependency[AsyncJobs]
    ) -> Response[bytes]:
        """An artifact's raw bytes with its content type; 404 for an unknown job or name."""
        found = jobs.artifact(job_id, name)
        # As a header, not media_type: Litestar would add a second charset to text types.
        return Response(found.data, headers={"content-type": found.content_type})


@get("/queue")
async def queue(jobs: NamedDependency[AsyncJobs]) -> Response[bytes]:
    """What runs now and what waits: resident models, the running job, queued counts."""
    return json_response(jobs.queue())


def idempotency_key(request: Request_) -> str | None:
    """The request's Idempotency-Key, if any; raises InvalidRequest when it is unusable."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters long"
        )
    return key


def _state_filter(value: str | None) -> JobState | None:
    if value is None or value == "":
        return None
    try:
        return JobState(value)
    except ValueError:
        states = ", ".join(state.value for state in JobState)
        raise InvalidRequest(f"state must be one of: {states}") from None


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


JOB_ROUTES: list[ControllerRouterHandler] = [JobsController, queue]
"""Every route of this module, for `create_app`."""
