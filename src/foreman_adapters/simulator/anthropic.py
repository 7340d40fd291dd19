"""Ollama's Anthropic layer: POST /v1/messages over POST /api/chat.

Mirrors ollama's `anthropic/anthropic.go` and `middleware/anthropic.go`: `system` and the
content blocks (text, image, tool_use, tool_result, thinking) become chat messages, tool
results their own `tool` messages; `max_tokens` (required) becomes `num_predict`; `thinking`
or `output_config.effort` becomes `think`, dropped for a model that cannot think (Ollama's
"relax_thinking", for Claude Code). `stream` defaults to false. A stream is named events —
message_start, content_block_start/delta/stop per block, message_delta, message_stop — and no
`ping`: Ollama sends none. message_start's input_tokens is Ollama's estimate (a quarter of the
request's text length); message_delta carries the real counts. Errors are
`{"type":"error","error":{"type","message"},"request_id"}`.

Left out: the built-in web search tool (`web_search_*` tool types, server_tool_use and
web_search_tool_result blocks), which Ollama runs against ollama.com.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.anthropic_output import MessageStream, to_message
from foreman_adapters.simulator.catalog import THINKING
from foreman_adapters.simulator.dialect import STREAM_HEADERS, Native, Translation
from foreman_adapters.simulator.openai_request import base64_error
from foreman_adapters.simulator.wire import BadRequest, Exchange, decode_request, encode, go_kind

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "max_tokens": int, "messages": list, "stream": bool, "tools": list,
    "temperature": (int, float), "top_p": (int, float), "top_k": int, "stop_sequences": list,
    "thinking": dict, "output_config": dict,
}  # fmt: skip
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error",
    529: "overloaded_error",
}  # fmt: skip
_EFFORTS = ("high", "medium", "low", "max")

Blocks = list[Native]


def error_body(status: int, message: str) -> Native:
    """Anthropic's error object; the type follows the status as Ollama's `anthropic.NewError`."""
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    return {"type": "error", "error": error, "request_id": _new_id("req")}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def messages_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """POST /v1/messages → POST /api/chat (`AnthropicMessagesMiddleware`)."""
    request = decode_request(ex.body, "MessagesRequest", _FIELDS, package="anthropic", empty="EOF")
    conversation = [_normalized(message) for message in request.get("messages") or []]
    model = str(request.get("model") or "")
    if not model:
        raise BadRequest(400, "model is required")
    if (request.get("max_tokens") or 0) <= 0:
        raise BadRequest(400, "max_tokens is required and must be positive")
    if not conversation:
        raise BadRequest(400, "messages is required")
    messages = _system(request.get("system"))
    for role, blocks in conversation:
        messages += _converted(role, blocks)
    stream = request.get("stream") is True
    native: Native = {
        "model": model,
        "messages": messages,
        "options": _options(request),
        "stream": stream,
    }
    tools = [_tool(tool) for tool in request.get("tools") or [] if not _web_search(tool)]
    if tools:
        native["tools"] = tools
    think = _think(request)
    known = sim.library.find(model)
    if think is not None and not (known and THINKING not in known.capabilities):
        native["think"] = think
    message_id = _new_id("msg")
    whole = partial(to_message, message_id)
    if not stream:
        return Translation(native, whole)
    estimate = _estimated_tokens(request, conversation)
    frames = MessageStream(message_id, model, estimate).frames
    return Translation(native, whole, frames, STREAM_HEADERS)


def _normalized(message: Any) -> tuple[str, Blocks]:
    """A message's role and content blocks (a string is one text block), as Ollama decodes it."""
    if not isinstance(message, dict):
        raise BadRequest(400, _cannot_unmarshal(message, "anthropic.MessageParam"))
    if "content" not in message:
        raise BadRequest(400, "unexpected end of JSON input")
    content = message["content"]
    if content is None or isinstance(content, str):
        return str(message.get("role") or ""), [{"type": "text", "text": content or ""}]
    if not isinstance(content, list):
        raise BadRequest(400, _cannot_unmarshal(content, "[]anthropic.ContentBlock"))
    for block in content:
        if not isinstance(block, dict):
            raise BadRequest(400, _cannot_unmarshal(block, "anthropic.ContentBlock"))
    return str(message.get("role") or ""), content


def _cannot_unmarshal(value: Any, go_type: str) -> str:
    return f"json: cannot unmarshal {go_kind(value)} into Go value of type {go_type}"


def _system(system: Any) -> list[Native]:
    if isinstance(system, str):
        text = system
    elif isinstance(system, list):
        texts = [block.get("text") for block in system if isinstance(block, dict)]
        kinds = [block.get("type") for block in system if isinstance(block, dict)]
        text = "".join(
            t for t, k in zip(texts, kinds, strict=True) if k == "text" and isinstance(t, str)
        )
    else:
        text = ""
    return [{"role": "system", "content": text}] if text else []


def _text_of(block: Native) -> str:
    text = block.get("text")
    return text if isinstance(text, str) else ""


def _converted(role: str, blocks: Blocks) -> list[Native]:
    """`convertMessage`: one message with the text, images, tool calls and thinking; each tool
    result its own `tool` message (before the message when the user sends them)."""
    role = role.lower()
    text, images, calls, thinking, results = "", [], [], "", []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind == "tool_use":
            for field in ("id", "name"):
                if not block.get(field):
                    raise BadRequest(400, f"tool_use block missing required '{field}' field")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            function = {"index": 0, "name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "function": function})
        elif kind == "tool_result":
            results.append(_tool_result(block))
        elif kind == "thinking" and block.get("thinking") is not None:
            thinking = str(block["thinking"])
    message: Native = {"role": role, "content": text}
    extras = {"images": images, "tool_calls": calls, "thinking": thinking}
    message.update({key: value for key, value in extras.items() if value})
    own = [message] if text or images or calls or thinking else []
    return results + own if role == "user" else own + results


def _image(source: Any) -> str:
    if not isinstance(source, dict):
        raise BadRequest(400, "invalid image source")
    if source.get("type") != "base64":
        raise BadRequest(
            400,
            f"invalid image source type: {source.get('type') or ''}. "
            "Only base64 images are supported.",
        )
    data = str(source.get("data") or "")
    problem = base64_error(data)
    if problem is not None:
        raise BadRequest(400, f"invalid base64 image data: {problem}")
    return data


def _tool_result(block: Native) -> Native:
    content = block.get("content")
    text, images = "", []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        for part in (p for p in content if isinstance(p, dict)):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                text += part["text"]
            elif part.get("type") == "image":
                if not isinstance(part.get("source"), dict):
                    raise BadRequest(400, "invalid tool_result image source")
                images.append(_image(part["source"]))
    result: Native = {"role": "tool", "content": text}
    if images:
        result["images"] = images
    result["tool_call_id"] = block.get("tool_use_id") or ""
    return result


def _options(request: Native) -> Native:
    options: Native = {"num_predict": request.get("max_tokens")}
    for name in ("temperature", "top_p", "top_k"):
        if request.get(name) is not None:
            options[name] = request[name]
    if request.get("stop_sequences"):
        options["stop"] = request["stop_sequences"]
    return options


def _web_search(tool: Any) -> bool:
    return isinstance(tool, dict) and str(tool.get("type") or "").startswith("web_search")


def _tool(tool: Any) -> Native:
    """A client tool as a native function tool; its `input_schema` is the parameters."""
    tool = tool if isinstance(tool, dict) else {}
    schema = tool.get("input_schema")
    if schema is not None and not isinstance(schema, dict):
        problem = _cannot_unmarshal(schema, "api.ToolFunctionParameters")
        raise BadRequest(
            400, f'invalid input_schema for tool "{tool.get("name") or ""}": {problem}'
        )
    function = {
        "name": tool.get("name") or "",
        "description": tool.get("description") or "",
        "parameters": schema or {},
    }
    return {"type": "function", "function": function}


def _think(request: Native) -> bool | str | None:
    kind = (request.get("thinking") or {}).get("type")
    if kind in ("enabled", "disabled"):
        return bool(kind == "enabled")
    config = request.get("output_config")
    effort = str((config or {}).get("effort") or "").strip().lower()
    effort = "high" if effort == "xhigh" else effort
    return effort if config is not None and effort in _EFFORTS else None


def _estimated_tokens(request: Native, conversation: Sequence[tuple[str, Blocks]]) -> int:
    """Ollama's rough input-token estimate: a quarter of the request's text, at least 1."""
    system = request.get("system")
    total = _content_length(system)
    for role, blocks in conversation:
        total += len(role.encode()) + sum(_block_length(block) for block in blocks)
    for tool in request.get("tools") or []:
        if isinstance(tool, dict):
            schema = tool.get("input_schema")
            total += len(str(tool.get("name") or "").encode())
            total += len(str(tool.get("description") or "").encode())
            total += len(encode(schema)) if schema is not None else 0
    tokens = total // 4
    return 1 if tokens == 0 and (conversation or system is not None) else tokens


def _content_length(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(_block_length(block) for block in content if isinstance(block, dict))
    return len(encode(content))


def _block_length(block: Native) -> int:
    length = sum(len(str(block.get(key) or "").encode()) for key in ("text", "thinking"))
    if block.get("type") in ("tool_use", "tool_result"):
        length += len(encode(block))
    return length
