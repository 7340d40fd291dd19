"""What the worker sends to the target for a job, and what it keeps of the answer."""

from __future__ import annotations

import json
import re
from typing import Any

from foreman_core.job import CHAT, Artifact, Job

FOREMAN_FIELDS = frozenset({"kind", "state_webhook_url", "priority"})
"""Fields of a POST /jobs body that are foreman's, not Ollama's; they are not forwarded."""

TEXT = "text/plain; charset=utf-8"


def target_body(job: Job) -> bytes:
    """The request body for the target.

    A sync job's body is the client's bytes, unchanged. An async job's is its Ollama request
    without foreman's own fields and with `stream: false`: its result is one complete object.
    """
    if job.sync:
        return job.payload
    request = {k: v for k, v in json.loads(job.payload).items() if k not in FOREMAN_FIELDS}
    request["stream"] = False
    return json.dumps(request, separators=(",", ":")).encode()


def load_body(job: Job) -> bytes:
    """A chat request with no messages: it makes Ollama load the job's model as the job will
    use it (same options and keep_alive), so the real request does not reload it."""
    request: dict[str, Any] = json.loads(job.payload)
    body: dict[str, Any] = {"model": request["model"], "messages": [], "stream": False}
    if "options" in request:
        body["options"] = request["options"]
    # keep_alive 0 would make this request an unload; the job's own request unloads after it.
    if "keep_alive" in request and not _is_zero_duration(request["keep_alive"]):
        body["keep_alive"] = request["keep_alive"]
    return json.dumps(body, separators=(",", ":")).encode()


_ZERO_DURATION = re.compile(r"(?:[0.]+(?:ns|us|µs|ms|s|m|h)?)+")


def _is_zero_duration(value: Any) -> bool:
    """Ollama's keep_alive of zero: the number 0 or a Go duration such as "0", "0s", "0m0s"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str) and _ZERO_DURATION.fullmatch(value.strip()) is not None


def result_artifacts(kind: str, result: dict[str, Any]) -> list[Artifact]:
    """The `completion` (and, when the model thought aloud, `thinking`) of a final response."""
    if kind == CHAT:
        message = result.get("message") or {}
        completion, thinking = message.get("content") or "", message.get("thinking") or ""
    else:
        completion, thinking = result.get("response") or "", result.get("thinking") or ""
    artifacts = [Artifact("completion", TEXT, str(completion).encode())]
    if thinking:
        artifacts.append(Artifact("thinking", TEXT, str(thinking).encode()))
    return artifacts
