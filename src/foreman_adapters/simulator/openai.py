"""Ollama's OpenAI layer: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Mirrors ollama's `openai/openai.go` and `middleware/openai.go`: each request becomes a native
one (`stream` defaults to false; `max_tokens` becomes `num_predict`; `temperature` and `top_p`
default to 1; no field reaches the load options, so a dialect request always loads a model with
its defaults and keeps it 5 minutes), and each native reply or NDJSON line becomes OpenAI's
JSON or `data: …` events. Errors are `{"error":{"message","type","param":null,"code":null}}`.
"""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.dialect import (
    DONE,
    Native,
    Translation,
    data_frame,
    think_from_effort,
)
from foreman_adapters.simulator.openai_request import (
    native_format,
    native_messages,
    sampling_options,
)
from foreman_adapters.simulator.text import unix_seconds
from foreman_adapters.simulator.wire import BadRequest, Exchange, decode_request, encode

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

MODELS_PREFIX = "/v1/models/"
_FINGERPRINT = "fp_ollama"
_SOMETHING_WRONG = "something went wrong, please see the ollama server logs for details"
_CHAT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "messages": list, "stream": bool, "stream_options": dict, "max_tokens": int,
    "seed": int, "tools": list, "response_format": dict, "reasoning": dict,
    "reasoning_effort": str,
}  # fmt: skip
_COMPLETION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "prompt": str, "stream": bool, "stream_options": dict, "max_tokens": int,
    "seed": int, "suffix": str,
}  # fmt: skip
_EMBED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "dimensions": int, "encoding_format": str,
}  # fmt: skip


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; the type follows the status as Ollama's `openai.NewError` does."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    error = {"message": message or _SOMETHING_WRONG, "type": kind, "param": None, "code": None}
    return {"error": error}


def _decode(ex: Exchange, go_type: str, fields: dict[str, type | tuple[type, ...]]) -> Native:
    return decode_request(ex.body, go_type, fields, package="openai", empty="EOF")


# -- requests ---------------------------------------------------------------------------------


def chat_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """POST /v1/chat/completions → POST /api/chat (`ChatMiddleware`, `FromChatRequest`)."""
    request = _decode(ex, "ChatCompletionRequest", _CHAT_FIELDS)
    raw_messages = request.get("messages") or []
    if not raw_messages:
        raise BadRequest(400, "[] is too short - 'messages'")
    stream = request.get("stream") is True
    native: Native = {
        "model": request.get("model") or "",
        "messages": native_messages(raw_messages),
        "options": sampling_options(request, completion=False),
        "stream": stream,
    }
    response_format = native_format(request.get("response_format"))
    if response_format is not None:
        native["format"] = response_format
    if request.get("tools"):
        native["tools"] = request["tools"]
    reasoning = request.get("reasoning")
    effort = reasoning.get("effort") if reasoning is not None else request.get("reasoning_effort")
    think = think_from_effort(str(effort or ""))
    if think is not None:
        native["think"] = think
    chat_id = f"chatcmpl-{random.randrange(999)}"
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    frames = _ChatStream(chat_id, include_usage).frames if stream else None
    return Translation(native, partial(_chat_completion, chat_id), frames)


def completion_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """POST /v1/completions → POST /api/generate (`CompletionsMiddleware`)."""
    request = _decode(ex, "CompletionRequest", _COMPLETION_FIELDS)
    stream = request.get("stream") is True
    native: Native = {
        "model": request.get("model") or "",
        "prompt": request.get("prompt") or "",
        "options": sampling_options(request, completion=True),
        "stream": stream,
    }
    if request.get("suffix"):
        native["suffix"] = request["suffix"]
    completion_id = f"cmpl-{random.randrange(999)}"
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    frames = _CompletionStream(completion_id, include_usage).frames if stream else None
    return Translation(native, partial(_completion, completion_id), frames)


def embed_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """POST /v1/embeddings → POST /api/embed (`EmbeddingsMiddleware`)."""
    request = _decode(ex, "EmbedRequest", _EMBED_FIELDS)
    encoding = str(request.get("encoding_format") or "")
    if encoding and encoding.lower() not in ("float", "base64"):
        raise BadRequest(
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
        )
    texts = request.get("input")
    if texts == "":
        texts = [""]
    if texts is None or texts == []:
        raise BadRequest(400, "invalid input")
    model = str(request.get("model") or "")
    native: Native = {"model": model, "input": texts}
    if request.get("dimensions"):
        native["dimensions"] = request["dimensions"]
    return Translation(native, partial(_embedding_list, model, encoding.lower()))


def list_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """GET /v1/models → GET /api/tags (`ListMiddleware`)."""
    return Translation({}, _model_list)


def retrieve_request(sim: SimulatedOllama, ex: Exchange) -> Translation:
    """GET /v1/models/{model} → POST /api/show (`RetrieveMiddleware`)."""
    name = ex.path.removeprefix(MODELS_PREFIX)
    return Translation({"name": name}, partial(_model, name))


# -- responses --------------------------------------------------------------------------------


def usage(native: Native) -> dict[str, int]:
    """Token counts of a final native reply."""
    prompt, output = native.get("prompt_eval_count") or 0, native.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def openai_tool_calls(calls: Sequence[Native] | None) -> list[Native]:
    """Native tool calls in OpenAI's form: `arguments` is a JSON string."""
    converted = []
    for call in calls or []:
        function = call.get("function") or {}
        converted.append(
            {
                "id": call.get("id") or "",
                "index": function.get("index") or 0,
                "type": "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": encode(function.get("arguments") or {}).decode(),
                },
            }
        )
    return converted


def _chat_completion(chat_id: str, native: Native) -> Native:
    message = native.get("message") or {}
    calls = openai_tool_calls(message.get("tool_calls"))
    reason = native.get("done_reason") or ""
    if reason == "stop" and calls:
        reason = "tool_calls"
    reply: Native = {"role": message.get("role") or "", "content": message.get("content") or ""}
    if message.get("thinking"):
        reply["reasoning"] = message["thinking"]
    if calls:
        reply["tool_calls"] = calls
    return {
        **_head(chat_id, "chat.completion", native),
        "choices": [{"index": 0, "message": reply, "finish_reason": reason or None}],
        "usage": usage(native),
    }


def _head(object_id: str, kind: str, native: Native, created: int | None = None) -> Native:
    return {
        "id": object_id,
        "object": kind,
        "created": unix_seconds(native.get("created_at") or "") if created is None else created,
        "model": native.get("model") or "",
        "system_fingerprint": _FINGERPRINT,
    }


class _ChatStream:
    """`ChatWriter` streaming: a role on the first chunk, reasoning split from content, a
    finish chunk of its own, usage when asked, then `[DONE]`."""

    def __init__(self, chat_id: str, include_usage: bool) -> None:
        self.chat_id = chat_id
        self.include_usage = include_usage
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False

    def frames(self, native: Native) -> list[bytes]:
        if self.created is None:
            self.created = unix_seconds(native.get("created_at") or "")
        message = native.get("message") or {}
        done = native.get("done") is True
        frames: list[bytes] = []
        trailer = (
            done
            and self.first_sent
            and not any(message.get(key) for key in ("content", "thinking", "tool_calls"))
        )
        if not trailer:
            for delta in self._deltas(message):
                self.tool_call_sent = self.tool_call_sent or bool(delta.get("tool_calls"))
                frames.append(data_frame(self._chunk(native, delta, None)))
            self.first_sent = True
        if done:
            reason = native.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(native, {}, reason)
            frames.append(data_frame(finish))
            if self.include_usage:
                frames.append(data_frame({**finish, "choices": [], "usage": usage(native)}))
            frames.append(DONE)
        return frames

    def _deltas(self, message: Native) -> list[Native]:
        """`ToStreamChunks`: one delta, or reasoning and then content when a line has both."""
        role = {} if self.first_sent else {"role": "assistant"}
        content, thinking = message.get("content") or "", message.get("thinking") or ""
        calls = openai_tool_calls(message.get("tool_calls"))
        if not (thinking and (content or calls)):
            return [_delta(role, content, thinking, calls)]
        return [_delta(role, None, thinking, []), _delta({}, content, "", calls)]

    def _chunk(self, native: Native, delta: Native, reason: str | None) -> Native:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        head = _head(self.chat_id, "chat.completion.chunk", native, self.created)
        return {**head, "choices": [choice]}


def _delta(role: Native, content: str | None, thinking: str, calls: list[Native]) -> Native:
    delta: Native = dict(role)
    if content is not None:
        delta["content"] = content
    if thinking:
        delta["reasoning"] = thinking
    if calls:
        delta["tool_calls"] = calls
    return delta


def _completion_choice(native: Native) -> Native:
    reason = native.get("done_reason") or None
    return {"text": native.get("response") or "", "index": 0, "finish_reason": reason}


def _completion(completion_id: str, native: Native) -> Native:
    head = _head(completion_id, "text_completion", native)
    return {**head, "choices": [_completion_choice(native)], "usage": usage(native)}


class _CompletionStream:
    """`CompleteWriter` streaming: one chunk per native line (zero usage on each when asked),
    the usage chunk, then `[DONE]`."""

    def __init__(self, completion_id: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.include_usage = include_usage

    def frames(self, native: Native) -> list[bytes]:
        head = _head(self.completion_id, "text_completion", native, unix_seconds(""))
        chunk: Native = {
            "id": head["id"],
            "object": head["object"],
            "created": head["created"],
            "choices": [_completion_choice(native)],
            "model": head["model"],
            "system_fingerprint": _FINGERPRINT,
        }
        if self.include_usage:
            chunk["usage"] = usage({})
        frames = [data_frame(chunk)]
        if native.get("done") is True:
            if self.include_usage:
                frames.append(data_frame({**chunk, "choices": [], "usage": usage(native)}))
            frames.append(DONE)
        return frames


def _embedding_list(model: str, encoding: str, native: Native) -> Native:
    vectors = native.get("embeddings")
    if vectors is None:
        return {"object": "", "data": None, "model": "", "usage": _embed_usage(0)}
    data = [
        {"object": "embedding", "embedding": _base64_floats(v) if encoding == "base64" else v,
         "index": i}
        for i, v in enumerate(vectors)
    ]  # fmt: skip
    count = native.get("prompt_eval_count") or 0
    return {"object": "list", "data": data or None, "model": model, "usage": _embed_usage(count)}


def _embed_usage(count: int) -> dict[str, int]:
    return {"prompt_tokens": count, "total_tokens": count}


def _base64_floats(vector: Sequence[float]) -> str:
    """A vector as little-endian float32s in base64 (`encoding_format: base64`)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _model_list(native: Native) -> Native:
    data = [_model(entry.get("model") or entry.get("name") or "", entry)
            for entry in native.get("models") or []]  # fmt: skip
    return {"object": "list", "data": data or None}


def _model(name: str, native: Native) -> Native:
    created = unix_seconds(native.get("modified_at") or "")
    return {"id": name, "object": "model", "created": created, "owned_by": _namespace(name)}


def _namespace(name: str) -> str:
    """The namespace of a model name, as Ollama's `model.ParseName` fills it in."""
    last = name.rsplit("/", 1)[-1]
    base = name.rsplit(":", 1)[0] if ":" in last else name
    parts = base.split("/")
    return parts[-2] if len(parts) >= 2 else "library"
