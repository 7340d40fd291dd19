"""OpenAI request fields as native ones, the way Ollama's `openai.FromChatRequest` and
`openai.FromCompleteRequest` convert them, with their error messages."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from foreman_adapters.simulator.dialect import Native, go_type_name
from foreman_adapters.simulator.wire import BadRequest

_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def native_messages(raw: Sequence[Any]) -> list[Native]:
    """OpenAI messages as native ones: a list of content parts becomes one message per part."""
    messages: list[Native] = []
    for message in raw:
        if not isinstance(message, dict):
            raise BadRequest(
                400,
                f"json: cannot unmarshal {go_type_name(message)} into Go struct field "
                "ChatCompletionRequest.messages of type openai.Message",
            )
        role = str(message.get("role") or "")
        tool_name = ""
        if role.lower() == "tool":
            tool_name = message.get("name") or _tool_name(raw, message.get("tool_call_id"))
        content = message.get("content")
        calls = message.get("tool_calls")
        extras = {
            "thinking": message.get("reasoning"),
            "tool_calls": _native_tool_calls(calls),
            "tool_name": tool_name,
            "tool_call_id": message.get("tool_call_id"),
        }
        if isinstance(content, str):
            messages.append(_native_message(role, content, **extras))
        elif isinstance(content, list):
            messages += [_part(role, part) for part in content]
            if messages and calls:
                messages[-1].update({key: value for key, value in extras.items() if value})
        elif calls is None:
            raise BadRequest(400, f"invalid message content type: {go_type_name(content)}")
        else:
            messages.append(_native_message(role, "", **{**extras, "tool_name": ""}))
    return messages


def _native_message(role: str, content: str, **extras: Any) -> Native:
    """A native message: `content` always, the rest only when set (Go's omitempty)."""
    return {"role": role, "content": content, **{k: v for k, v in extras.items() if v}}


def _tool_name(raw: Sequence[Any], call_id: Any) -> str:
    """The function a tool result answers, found by its call id (the last one wins)."""
    for message in reversed(raw):
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            if call_id and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name") or "")
    return ""


def _native_tool_calls(calls: Any) -> list[Native]:
    """An assistant's OpenAI tool calls as native ones: `arguments` must hold a JSON object."""
    native = []
    for call in calls if isinstance(calls, list) else []:
        function = (call.get("function") if isinstance(call, dict) else None) or {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except (TypeError, ValueError, AttributeError):
            raise BadRequest(400, "invalid tool call arguments") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise BadRequest(400, "invalid tool call arguments")
        name = function.get("name") or ""
        call_function = {"index": 0, "name": name, "arguments": arguments or {}}
        native.append({"id": call.get("id") or "", "function": call_function})
    return native


def _part(role: str, part: Any) -> Native:
    """One content part as its own native message."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"role": role, "content": part["text"]}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str):
            return {"role": role, "content": "", "images": [image_data(url)]}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise BadRequest(400, "invalid input_audio format")
        if not isinstance(audio.get("data"), str):
            raise BadRequest(400, "invalid input_audio format: missing data")
        problem = base64_error(audio["data"])
        if problem is not None:
            raise BadRequest(400, f"invalid input_audio base64 data: {problem}")
        return {"role": role, "content": "", "images": [audio["data"]]}
    raise BadRequest(400, "invalid message format")


def image_data(url: str) -> str:
    """The base64 image of a data URL; Ollama fetches no URLs."""
    if url.startswith(("http://", "https://")):
        raise BadRequest(
            400,
            "image URLs are not currently supported, please use base64 encoded data instead",
        )
    prefix = next((p for p in (*_IMAGE_PREFIXES, "data:;base64,") if url.startswith(p)), None)
    data = url.removeprefix(prefix) if prefix else ""
    if prefix is None or base64_error(data) is not None:
        raise BadRequest(400, "invalid image input")
    return data


def base64_error(data: str) -> str | None:
    """Go's standard-base64 decoding error for `data`, if any."""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        alphabet = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        bad = next((i for i, ch in enumerate(data.encode()) if ch not in alphabet), len(data))
        return f"illegal base64 data at input byte {bad}"
    return None


def sampling_options(request: Native, *, completion: bool) -> Native:
    """The sampling options Ollama derives; none of them changes how a model loads."""
    options: Native = {}
    stop = request.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        wrong = [s for s in stop if not isinstance(s, str)]
        if completion and wrong:
            raise BadRequest(400, f"invalid type for 'stop' field: {go_type_name(wrong[0])}")
        options["stop"] = [s for s in stop if isinstance(s, str)] or None
    if request.get("max_tokens") is not None:
        options["num_predict"] = request["max_tokens"]
    temperature = request.get("temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    if request.get("seed") is not None:
        options["seed"] = request["seed"]
    for penalty in ("frequency_penalty", "presence_penalty"):
        if completion or request.get(penalty) is not None:
            options[penalty] = request.get(penalty) or 0.0
    top_p = request.get("top_p")
    options["top_p"] = (top_p or 1.0) if completion else (1.0 if top_p is None else top_p)
    return options


def native_format(response_format: Any) -> Any:
    """`response_format` as the native `format`: "json", a JSON schema, or None."""
    if not isinstance(response_format, dict):
        return None
    kind = str(response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None
