"""Ollama's OpenAI Responses layer: POST /v1/responses, stateless, over POST /api/chat.

Mirrors ollama's `openai/responses.go` and `ResponsesMiddleware`: `input` (a string, or items:
messages, function calls and their outputs, reasoning) and `instructions` become chat messages;
`max_output_tokens` becomes `num_predict`, `reasoning.effort` becomes `think`, function tools
become native tools; `stream` defaults to false. A streamed response is named events, each with
a `sequence_number` (built from Go maps, so their keys are sorted), from `response.created` to
`response.completed`. Nothing is stored: `previous_response_id` is always null.

Left out: the built-in `web_search` tool (Ollama runs it against ollama.com; here it is dropped
from the tools) and zstd-compressed request bodies.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.dialect import (
    STREAM_HEADERS,
    Native,
    Translation,
    think_from_effort,
)
from foreman_adapters.simulator.openai_request import image_data
from foreman_adapters.simulator.responses_output import ResponseStream, to_response
from foreman_adapters.simulator.wire import (
    BadRequest,
    Exchange,
    decode_request,
    go_kind,
    go_syntax_error,
)

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "instructions": str, "max_output_tokens": int, "temperature": (int, float),
    "top_p": (int, float), "tools": list, "stream": bool, "reasoning": dict, "text": dict,
    "truncation": str, "background": bool,
}  # fmt: skip
_ITEM_TYPE = 'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'
_KNOWN_ITEMS = ("message", "function_call", "function_call_output", "reasoning", "web_search_call")
_KNOWN_CONTENT = ("input_text", "input_image", "output_text", "input_file")


def responses_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """POST /v1/responses → POST /api/chat (`ResponsesMiddleware`, `FromResponsesRequest`)."""
    request = decode_request(ex.body, "ResponsesRequest", _FIELDS, package="openai", empty="EOF")
    messages = _messages(request)
    options: Native = {"temperature": _number(request, "temperature", 1.0)}
    if request.get("top_p") is not None:
        options["top_p"] = request["top_p"]
    if request.get("max_output_tokens") is not None:
        options["num_predict"] = request["max_output_tokens"]
    stream = request.get("stream") is True
    model = str(request.get("model") or "")
    native: Native = {"model": model, "messages": messages, "options": options, "stream": stream}
    think = think_from_effort(str((request.get("reasoning") or {}).get("effort") or ""))
    tools = [tool for declared in request.get("tools") or [] for tool in _tools(declared)]
    if tools:
        native["tools"] = tools
    text_format = (request.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema" and text_format.get("schema") is not None:
        native["format"] = text_format["schema"]
    if think is not None:
        native["think"] = think
    response_id = f"resp_{random.randrange(999999)}"
    item_id = f"msg_{random.randrange(999999)}"
    whole = partial(to_response, request, response_id, item_id)
    if not stream:
        return Translation(native, whole)
    frames = ResponseStream(request, response_id, item_id).frames
    return Translation(native, whole, frames, STREAM_HEADERS)


def _number(request: Native, name: str, default: float) -> float:
    value = request.get(name)
    return default if value is None else float(value)


# -- input ------------------------------------------------------------------------------------


def _messages(request: Native) -> list[Native]:
    """`instructions` and `input` as chat messages, merged as Ollama merges them."""
    messages: list[Native] = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": request["instructions"]})
    value = request.get("input")
    if isinstance(value, str) or value is None:
        if value:
            messages.append({"role": "user", "content": value})
        return messages
    if not isinstance(value, list):
        raise BadRequest(400, _not_string_or_array("input", value))
    kinds = [_item_kind(index, item) for index, item in enumerate(value)]
    thinking = ""
    for index, (kind, item) in enumerate(zip(kinds, value, strict=True)):
        last = messages[-1] if messages else None
        if kind == "reasoning":
            thinking = str(item.get("encrypted_content") or "")
        elif kind == "message":
            message = _input_message(index, item)
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            answered = _answered_by_next(value, kinds, index)
            if message["role"] == "assistant" and last and _answers(last, answered):
                joiner = "\n" if last["content"] and message["content"] else ""
                last["content"] += joiner + message["content"]
                last["thinking"] = message.get("thinking") or last.get("thinking", "")
                continue
            messages.append(message)
        elif kind == "function_call":
            call = {"id": item.get("call_id") or "", "function": _called(item)}
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
            if thinking:
                last["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text_of(index, output or [])[0]
            messages.append(
                {"role": "tool", "content": content, "tool_call_id": item.get("call_id")}
            )
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def _answered_by_next(items: Sequence[Any], kinds: Sequence[str], index: int) -> str:
    """The call id a function_call_output right after item `index` answers, if there is one."""
    if index + 1 < len(items) and kinds[index + 1] == "function_call_output":
        return str(items[index + 1].get("call_id") or "")
    return ""


def _answers(last: Native, call_id: str) -> bool:
    """Whether `last` is the assistant message holding the call `call_id` (an assistant message
    replayed between a call and its output is folded into it)."""
    if not call_id or last["role"] != "assistant":
        return False
    return any(call["id"] == call_id for call in last.get("tool_calls") or [])


def _item_kind(index: int, item: Any) -> str:
    if not isinstance(item, dict):
        problem = f"json: cannot unmarshal {go_kind(item)} into Go value of type {_ITEM_TYPE}"
        raise BadRequest(400, f"input[{index}]: {problem}")
    kind = item.get("type") or ("message" if item.get("role") else "")
    if not kind:
        raise BadRequest(400, f"input[{index}]: input item missing required 'type' field")
    if kind not in _KNOWN_ITEMS:
        raise BadRequest(400, f"input[{index}]: unknown input item type: {json.dumps(kind)}")
    return str(kind)


def _input_message(index: int, item: Native) -> Native:
    content = item.get("content")
    images: list[str] = []
    if isinstance(content, str):
        text = content
    elif content is None:
        text = ""
    elif isinstance(content, list):
        text, images = _text_of(index, content)
    else:
        raise BadRequest(400, f"input[{index}]: " + _not_string_or_array("content", content))
    message: Native = {"role": str(item.get("role") or ""), "content": text}
    if images:
        message["images"] = images
    return message


def _text_of(index: int, parts: Sequence[Any]) -> tuple[str, list[str]]:
    """The text and images of Responses content parts; files are refused."""
    text, images = "", []
    for number, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _KNOWN_CONTENT:
            raise BadRequest(
                400, f"input[{index}]: content[{number}]: unknown content type: {kind}"
            )
        if kind in ("input_text", "output_text"):
            text += str(part.get("text") or "")
        elif kind == "input_image" and part.get("image_url"):
            images.append(image_data(str(part["image_url"])))
        elif kind == "input_file":
            raise BadRequest(400, "file inputs are not currently supported")
    return text, images


def _called(item: Native) -> Native:
    arguments = item.get("arguments") or ""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError as exc:
        problem = go_syntax_error(arguments, exc.pos)
        raise BadRequest(400, f"failed to parse function call arguments: {problem}") from None
    return {"index": 0, "name": item.get("name") or "", "arguments": parsed}


def _not_string_or_array(field: str, value: Any) -> str:
    return (
        f"{field} must be a string or array: json: cannot unmarshal {go_kind(value)} "
        "into Go value of type []json.RawMessage"
    )


def _tools(tool: Any) -> list[Native]:
    """A Responses tool as native tools: a namespace expands to its members, prefixed."""
    if not isinstance(tool, dict) or tool.get("type") == "web_search":
        return []
    if tool.get("type") != "namespace":
        function = {
            "name": tool.get("name") or "",
            "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {},
        }
        return [{"type": tool.get("type") or "", "function": function}]
    prefix = f"{tool['name']}." if tool.get("name") else ""
    members = [native for member in tool.get("tools") or [] for native in _tools(member)]
    for member in members:
        if prefix and not member["function"]["name"].startswith(prefix):
            member["function"]["name"] = prefix + member["function"]["name"]
    return members
