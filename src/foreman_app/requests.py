"""Reading Ollama request bodies the way Ollama does: JSON whatever the Content-Type."""

from __future__ import annotations

from typing import Any

import msgspec


class InvalidRequest(ValueError):
    """A request body foreman cannot accept; the message is the client's 400 error."""


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
