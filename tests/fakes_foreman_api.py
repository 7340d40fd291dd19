"""An in-memory fake of foreman's native routes (the job API of docs/api.md), for client tests.

It answers through `httpx.MockTransport`, so one fake serves the sync and the async client.
A job does not run by itself: every `GET /jobs/{id}` moves it one step along its script
(by default queued → working → done), so tests drive `wait()` by state, not by time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx

FINISHED = frozenset({"done", "failed", "cancelled"})
INLINE_LIMIT = 262_144


def normalize(model: str) -> str:
    """`llama3.2` and `llama3.2:latest` are one model."""
    return model if ":" in model else f"{model}:latest"


@dataclass
class FakeJob:
    """One job of the fake, with the states it will still go through."""

    job_id: str
    body: dict[str, Any]
    script: list[str]
    state: str = "queued"
    attempts: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None
    artifacts: dict[str, bytes] = field(default_factory=dict)
    created_at: str = "2026-01-02T03:04:05.000000Z"

    @property
    def model(self) -> str:
        """The normalised model name."""
        return normalize(self.body["model"])

    @property
    def kind(self) -> str:
        """chat or generate."""
        return self.body.get("kind", "chat")


class FakeForemanApi:
    """foreman's native routes over an in-memory job table; see the module docstring."""

    def __init__(self, *, token: str | None = None, inline_limit: int = INLINE_LIMIT) -> None:
        self.token = token
        self.inline_limit = inline_limit
        self.models = {"llama3.2:latest", "qwen3:8b"}
        self.jobs: dict[str, FakeJob] = {}
        self.next_script = ["queued", "working", "done"]
        self.failure = "the target answered 500: model crashed"
        self.queue_full = False
        self.unreachable = False
        self.interrupt_polls = False  # a job GET raises KeyboardInterrupt, as Ctrl-C would
        self.resident = [
            {
                "name": "llama3.2:latest",
                "size": 2_019_393_189,
                "size_vram": 2_019_393_189,
                "expires_at": "2026-01-02T04:00:00Z",
            }
        ]
        self.idempotency: dict[str, tuple[dict[str, Any], str]] = {}

    def transport(self) -> httpx.MockTransport:
        """A transport for `ForemanClient(transport=…)` or `AsyncForemanClient(transport=…)`."""
        return httpx.MockTransport(self.handle)

    def add_job(
        self, model: str = "llama3.2", prompt: str = "hi", script: list[str] | None = None
    ) -> str:
        """Store a job directly (as if submitted earlier) and return its id."""
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        return self._create(body, list(script or self.next_script)).job_id

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as foreman would."""
        if self.unreachable:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.raw_path.decode().split("?")[0]
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if parts == ["healthz"]:
            return httpx.Response(200, json={"status": "ok", "degraded": False})
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            return _error(401, "unauthorized")
        return self._route(request, parts)

    def _route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        method = request.method
        if parts == ["jobs"] and method == "POST":
            return self._submit(request)
        if parts == ["jobs"] and method == "GET":
            return self._list(request)
        if len(parts) == 2 and parts[0] == "jobs" and method == "GET":
            if self.interrupt_polls:
                raise KeyboardInterrupt
            return self._get(parts[1])
        if len(parts) == 2 and parts[0] == "jobs" and method == "DELETE":
            return self._cancel(parts[1])
        if len(parts) == 4 and parts[0] == "jobs" and parts[2] == "artifacts" and method == "GET":
            return self._artifact(parts[1], parts[3])
        if parts == ["queue"] and method == "GET":
            return httpx.Response(200, json=self._queue())
        if parts == ["api", "ps"] and method == "GET":
            return httpx.Response(200, json={"models": self.resident})
        return _error(404, "not found")

    def _submit(self, request: httpx.Request) -> httpx.Response:
        try:
            body = json.loads(request.content)
        except ValueError:
            return _error(400, "malformed JSON")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _error(400, "missing field 'model'")
        if not isinstance(body.get("priority", 0), int):
            return _error(400, "'priority' must be an integer")
        if normalize(body["model"]) not in self.models:
            return _error(404, f"model '{body['model']}' not found")
        if self.queue_full:
            response = _error(
                503, "server busy, please try again.  maximum pending requests exceeded"
            )
            response.headers["Retry-After"] = "5"
            return response
        key = request.headers.get("Idempotency-Key")
        if key in self.idempotency:
            first_body, job_id = self.idempotency[key]
            if first_body != body:
                return _error(
                    422, f"Idempotency-Key {key!r} was already used with a different body"
                )
            return _accepted(job_id)
        job = self._create(body, list(self.next_script))
        if key is not None:
            self.idempotency[key] = (body, job.job_id)
        return _accepted(job.job_id)

    def _create(self, body: dict[str, Any], script: list[str]) -> FakeJob:
        job_id = f"01JFAKE{len(self.jobs):019d}"
        job = FakeJob(job_id, body, script[1:])
        if script[0] != "queued":
            self._advance(job, script[0])
        self.jobs[job_id] = job
        return job

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        limit = int(params.get("limit", "50"))
        if not 1 <= limit <= 1000:
            return _error(400, "'limit' must be between 1 and 1000")
        newest_first = [
            job
            for job in reversed(self.jobs.values())
            if params.get("state") in (None, job.state)
            and (params.get("model") is None or normalize(params["model"]) == job.model)
        ]
        start = int(params.get("cursor", "0"))
        page = newest_first[start : start + limit]
        more = start + limit < len(newest_first)
        return httpx.Response(
            200,
            json={
                "jobs": [self._summary(job) for job in page],
                "next_cursor": str(start + limit) if more else None,
            },
        )

    def _get(self, job_id: str) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "job not found")
        if job.script and job.state not in FINISHED:
            self._advance(job, job.script.pop(0))
        return httpx.Response(200, json=self.view(job))

    def _advance(self, job: FakeJob, state: str) -> None:
        if job.state == "queued" and state not in ("queued", "cancelled"):
            job.attempts += 1
        job.state = state
        if state == "failed":
            job.error = self.failure
        if state == "done":
            text = self.completion_for(job)
            job.result = (
                {
                    "model": job.body["model"],
                    "message": {"role": "assistant", "content": text},
                    "done": True,
                }
                if job.kind == "chat"
                else {"model": job.body["model"], "response": text, "done": True}
            )
            job.artifacts["completion"] = text.encode()

    @staticmethod
    def completion_for(job: FakeJob) -> str:
        """What the fake model answers: the prompt, echoed."""
        if job.kind == "generate":
            return f"echo: {job.body.get('prompt', '')}"
        return f"echo: {job.body['messages'][-1]['content']}"

    def _cancel(self, job_id: str) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "job not found")
        if job.state in FINISHED:
            return _error(409, f"job is already {job.state}")
        job.state, job.script = "cancelled", []
        return httpx.Response(200, json=self.view(job))

    def _artifact(self, job_id: str, name: str) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None or name not in job.artifacts:
            return _error(404, "artifact not found")
        return httpx.Response(
            200, content=job.artifacts[name], headers={"Content-Type": "text/plain; charset=utf-8"}
        )

    def _queue(self) -> dict[str, Any]:
        running = next(
            (job for job in self.jobs.values() if job.state in ("loading", "working")), None
        )
        counts: dict[tuple[str, int], int] = {}
        for job in self.jobs.values():
            if job.state == "queued":
                group = (job.model, job.body.get("priority", 0))
                counts[group] = counts.get(group, 0) + 1
        return {
            "resident": [model["name"] for model in self.resident],
            "running": self._summary(running) if running else None,
            "queued": [
                {"model": model, "priority": priority, "count": count}
                for (model, priority), count in counts.items()
            ],
            "queued_total": sum(counts.values()),
            "oldest_queued_age_seconds": 42.0 if counts else None,
        }

    def _summary(self, job: FakeJob) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "kind": job.kind,
            "model": job.model,
            "state": job.state,
            "priority": job.body.get("priority", 0),
            "attempts": job.attempts,
            "created_at": job.created_at,
            "started_at": None,
            "finished_at": None,
            "error": job.error,
        }

    def view(self, job: FakeJob) -> dict[str, Any]:
        """The job object of GET /jobs/{id}."""
        queued = [j for j in self.jobs.values() if j.state == "queued"]
        artifacts = []
        for name, data in job.artifacts.items():
            entry: dict[str, Any] = {
                "name": name,
                "content_type": "text/plain; charset=utf-8",
                "size": len(data),
            }
            if len(data) <= self.inline_limit:
                entry["data"] = data.decode()
            else:
                entry["url"] = f"http://public.example/jobs/{job.job_id}/artifacts/{name}"
            artifacts.append(entry)
        finished = "2026-01-02T03:04:09.500000Z" if job.state in FINISHED else None
        return {
            **self._summary(job),
            "queue_position": queued.index(job) if job in queued else None,
            "started_at": "2026-01-02T03:04:06.000000Z" if job.attempts else None,
            "finished_at": finished,
            "result": job.result,
            "artifacts": artifacts,
        }


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": message})


def _accepted(job_id: str) -> httpx.Response:
    return httpx.Response(202, json={"job_id": job_id}, headers={"Location": f"/jobs/{job_id}"})
