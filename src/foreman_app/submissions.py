"""The body of `POST /jobs`, validated at the edge with msgspec Structs.

The Structs know the fields of Ollama's chat and generate requests well enough to refuse a wrong
type with a 400 that names the field. Fields they do not know are accepted and kept: the stored
payload is the body exactly as sent, and the worker strips foreman's own fields before the
target sees it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from foreman_adapters.webhooks import WebhookUrlRefused, validate_webhook_url
from foreman_app.requests import ChatRequest, GenerateRequest, InvalidRequest, json_object
from foreman_core.job import CHAT, GENERATE

MAX_PRIORITY = 1000
"""Priorities are bounded to ±1000: they only order jobs (sync requests run at 10), so a wider
range buys nothing, while an unbounded integer would not fit SQLite's 64-bit column."""

KINDS = (CHAT, GENERATE)

Priority = Annotated[int, msgspec.Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]


class ChatSubmission(ChatRequest, kw_only=True):
    """`POST /jobs` with an Ollama chat request."""

    kind: str = CHAT
    priority: Priority = 0
    state_webhook_url: str | None = None
    stream: Any = None  # ignored: the worker sends an async job with `stream: false`


class GenerateSubmission(GenerateRequest, kw_only=True):
    """`POST /jobs` with `"kind": "generate"` and an Ollama generate request."""

    kind: str = GENERATE
    priority: Priority = 0
    state_webhook_url: str | None = None
    stream: Any = None  # ignored, as for a chat


Submission = ChatSubmission | GenerateSubmission

_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)


def parse_submission(body: bytes) -> Submission:
    """The body of `POST /jobs` as a typed submission; raises InvalidRequest naming the field."""
    fields = json_object(body)
    kind = fields.get("kind", CHAT)
    if kind not in KINDS:
        raise InvalidRequest('kind must be "chat" or "generate"')
    schema: type[Submission] = ChatSubmission if kind == CHAT else GenerateSubmission
    try:
        submission = msgspec.convert(fields, schema)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
    if submission.state_webhook_url is not None:
        try:
            validate_webhook_url(submission.state_webhook_url)
        except WebhookUrlRefused as exc:
            raise InvalidRequest(f"state_webhook_url: {exc}") from None
    return submission


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec's message turned around so it starts with the field: `priority: expected …`."""
    text = str(exc)
    if text.startswith("Object missing required field `model`") and " - at " not in text:
        return "model is required"
    match = _MSGSPEC_PATH.match(text)
    assert match is not None  # the pattern matches any text
    message = match["message"]
    message = message[:1].lower() + message[1:]
    return f"{match['path']}: {message}" if match["path"] else message
