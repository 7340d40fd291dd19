"""Ollama's chat and generate requests: read the way Ollama reads them, typed for the docs.

A body is JSON whatever its Content-Type (`curl -d` sends a form type), and the bytes go to
Ollama as the client sent them, fields foreman does not know included. `ollama_request` checks
only what foreman itself reads, in Ollama's words. The Structs type the fields as Ollama does:
they describe the queued routes' bodies in the OpenAPI description, and `POST /jobs`
(`submissions.py`) validates its submissions with them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.exceptions import InternalServerException


class InvalidRequest(ValueError):
    """A request body foreman cannot accept; the message is the client's 400 error."""


class ClientLeft(Exception):
    """The client disconnected before it had sent its whole request: nobody to answer."""


async def request_body(request: Request[Any, Any, Any]) -> bytes:
    """The request's whole body; `ClientLeft` if the client goes away first (Litestar reports
    that as a 500, which would log an error for what is no fault of foreman's)."""
    try:
        return await request.body()
    except InternalServerException as exc:
        raise ClientLeft(exc.detail) from None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest in Ollama's wording."""
    if not body.strip():
        raise InvalidRequest("missing request body")
    try:
        value = msgspec.json.decode(body)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid JSON: the body is not valid UTF-8") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    return value


def ollama_request(body: bytes) -> dict[str, Any]:
    """A chat/generate body with a usable `model` (Ollama's checks and messages)."""
    fields = json_object(body)
    model = fields.get("model")
    if model is None or model == "":
        raise InvalidRequest("model is required")
    if not isinstance(model, str):
        raise InvalidRequest("model must be a string")
    stream = fields.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean")
    options = fields.get("options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("options must be an object")
    return fields


ModelName = Annotated[str, msgspec.Meta(min_length=1, description="the model, e.g. llama3.2")]
KeepAlive = str | int | float | None
Format = str | dict[str, Any] | None
Think = bool | str | None


class ChatMessage(msgspec.Struct):
    """One message of a chat request, as far as Ollama types it."""

    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class OllamaRequest(msgspec.Struct, kw_only=True):
    """The fields Ollama's chat and generate requests share. Other fields are Ollama's to
    judge: foreman passes them on untouched."""

    model: ModelName
    options: dict[str, Any] | None = None
    format: Format = None
    keep_alive: KeepAlive = None
    think: Think = None


class ChatRequest(OllamaRequest, kw_only=True):
    """The body of `POST /api/chat`."""

    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = None


class GenerateRequest(OllamaRequest, kw_only=True):
    """The body of `POST /api/generate`."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool | None = None
    images: list[str] | None = None
    context: list[int] | None = None
    stream: bool | None = None
