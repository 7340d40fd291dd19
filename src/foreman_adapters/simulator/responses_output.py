"""What /v1/responses answers: Ollama's `ToResponse` and `ResponsesStreamConverter`.

A whole response carries a reasoning item (when the model thought), then either its function
calls or one message item. A stream is named events, each with a `sequence_number`: created,
in_progress, the reasoning summary, the function calls or the text, then `response.completed`
with the whole object. Ollama builds the events from Go maps, so their keys come out sorted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from foreman_adapters.simulator.dialect import Native, event_frame, go_number
from foreman_adapters.simulator.openai import openai_tool_calls
from foreman_adapters.simulator.text import unix_seconds

Event = tuple[str, Native]


def to_response(request: Native, response_id: str, item_id: str, native: Native) -> Native:
    """`ToResponse`: the whole response object for a native reply, completed."""
    message = native.get("message") or {}
    output: list[Native] = []
    if message.get("thinking"):
        output.append(_reasoning_item(f"rs_{response_id}", message["thinking"]))
    calls = openai_tool_calls(message.get("tool_calls"))
    for number, call in enumerate(calls):
        output.append(_function_call(f"fc_{response_id}_{number}", call, "completed"))
    if not calls:
        output.append(_message_item(item_id, message.get("content") or ""))
    created = unix_seconds(native.get("created_at") or "")
    body = response_object(request, response_id, "completed", output, _usage(native), created)
    body["completed_at"] = int(time.time())
    return body


def response_object(
    request: Native,
    response_id: str,
    status: str,
    output: list[Native],
    usage: Native | None,
    created_at: int,
    *,
    streaming: bool = False,
) -> Native:
    """The response object, echoing the request's settings as Ollama does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": None,
        "status": status,
        "incomplete_details": None,
        "model": request.get("model") or "",
        "previous_response_id": None,
        "instructions": request.get("instructions") or None,
        "output": output,
        "error": None,
        "tools": [_tool_echo(tool) for tool in request.get("tools") or []],
        "tool_choice": "auto",
        "truncation": "disabled" if request.get("truncation") is None else request["truncation"],
        "parallel_tool_calls": True,
        "text": {"format": _format_echo((request.get("text") or {}).get("format"))},
        "top_p": go_number(_float(request.get("top_p"))),
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": go_number(_float(request.get("temperature"))),
        "reasoning": _reasoning_echo(request.get("reasoning") or {}, streaming),
        "usage": usage,
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": bool(request.get("background")),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _float(value: Any) -> float:
    """A sampling setting, 1 when absent (what Ollama echoes for top_p and temperature)."""
    return 1.0 if value is None else float(value)


def _tool_echo(tool: Any) -> Native:
    fields = ("type", "name", "description", "strict", "parameters")
    return {key: tool.get(key) for key in fields} if isinstance(tool, dict) else {}


def _format_echo(asked: Any) -> Native:
    if not isinstance(asked, dict):
        return {"type": "text"}
    echoed: Native = {"type": asked.get("type") or ""}
    for key in ("name", "schema", "strict"):
        if asked.get(key) not in (None, ""):
            echoed[key] = asked[key]
    return echoed


def _reasoning_echo(asked: Native, streaming: bool) -> Native | None:
    """The request's reasoning settings: both keys (null when unset) in a stream, only the set
    ones in a whole response; null when neither is set."""
    both = {"effort": asked.get("effort") or None, "summary": asked.get("summary") or None}
    if not any(both.values()):
        return None
    return both if streaming else {key: value for key, value in both.items() if value}


def _usage(native: Native) -> Native:
    prompt, output = native.get("prompt_eval_count") or 0, native.get("eval_count") or 0
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _text_part(text: str) -> Native:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str) -> Native:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [_text_part(text)],
    }


def _reasoning_item(item_id: str, thinking: str) -> Native:
    summary = [{"type": "summary_text", "text": thinking}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": thinking}


def _function_call(item_id: str, call: Native, status: str) -> Native:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
    }


class ResponseStream:
    """`ResponsesStreamConverter`: native lines to Responses events (reasoning, then function
    calls or text; text after a tool call is dropped)."""

    def __init__(self, request: Native, response_id: str, item_id: str) -> None:
        self.request, self.response_id, self.item_id = request, response_id, item_id
        self.sequence = self.output_index = 0
        self.started = self.content_started = self.tool_calls_sent = False
        self.text = self.thinking = self.reasoning_id = ""
        self.completed: list[Native] = []

    def frames(self, native: Native) -> list[bytes]:
        """The events of one native line."""
        return [event_frame(name, data, sort_keys=True) for name, data in self._process(native)]

    def _event(self, kind: str, **data: Any) -> Event:
        self.sequence += 1
        return kind, {**data, "type": kind, "sequence_number": self.sequence - 1}

    def _object(self, status: str, output: list[Native], usage: Native | None) -> Native:
        now = int(time.time())
        return response_object(
            self.request, self.response_id, status, output, usage, now, streaming=True
        )

    def _process(self, native: Native) -> list[Event]:
        message = native.get("message") or {}
        events = []
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                events.append(self._event(kind, response=self._object("in_progress", [], None)))
        if message.get("thinking"):
            events += self._reasoning(message["thinking"])
        if message.get("tool_calls"):
            events += self._finish_reasoning() + self._calls(message["tool_calls"])
            self.tool_calls_sent = True
        elif not self.tool_calls_sent and message.get("content"):
            events += self._text(message["content"])
        if native.get("done") is True:
            events += self._completion(native)
        return events

    def _reasoning(self, thinking: str) -> list[Event]:
        events = []
        index = self.output_index
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            events.append(self._event("response.output_item.added", output_index=index, item=item))
        self.thinking += thinking
        where = {"item_id": self.reasoning_id, "output_index": index, "summary_index": 0}
        events.append(self._event("response.reasoning_summary_text.delta", **where, delta=thinking))
        return events

    def _finish_reasoning(self) -> list[Event]:
        if not self.reasoning_id:
            return []
        index = self.output_index
        where = {"item_id": self.reasoning_id, "output_index": index, "summary_index": 0}
        item = _reasoning_item(self.reasoning_id, self.thinking)
        events = [
            self._event("response.reasoning_summary_text.done", **where, text=self.thinking),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
        self.completed.append(item)
        self.reasoning_id, self.thinking = "", ""
        self.output_index += 1
        return events

    def _calls(self, calls: Sequence[Native]) -> list[Event]:
        events = []
        converted = openai_tool_calls(calls)
        for number, call in enumerate(converted):
            index, item_id = self.output_index + number, f"fc_{random.randrange(999999)}_{number}"
            item = _function_call(item_id, call, "completed")
            added = {**_function_call(item_id, call, "in_progress"), "arguments": ""}
            where = {"item_id": item_id, "output_index": index}
            arguments = item["arguments"]
            events += [
                self._event("response.output_item.added", output_index=index, item=added),
                self._event("response.function_call_arguments.delta", **where, delta=arguments),
                self._event("response.function_call_arguments.done", **where, arguments=arguments),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
            self.completed.append(item)
        self.output_index += len(converted)
        return events

    def _text(self, content: str) -> list[Event]:
        events = self._finish_reasoning()
        where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        if not self.content_started:
            self.content_started = True
            item = {**_message_item(self.item_id, ""), "status": "in_progress", "content": []}
            index = self.output_index
            events.append(self._event("response.output_item.added", output_index=index, item=item))
            events.append(self._event("response.content_part.added", **where, part=_text_part("")))
        self.text += content
        events.append(
            self._event("response.output_text.delta", **where, delta=content, logprobs=[])
        )
        return events

    def _completion(self, native: Native) -> list[Event]:
        events = self._finish_reasoning()
        output = list(self.completed)
        item = _message_item(self.item_id, self.text)
        if self.content_started:
            output.append(item)
        if self.content_started and not self.tool_calls_sent:
            index = self.output_index
            where = {"item_id": self.item_id, "output_index": index, "content_index": 0}
            events += [
                self._event("response.output_text.done", **where, text=self.text, logprobs=[]),
                self._event("response.content_part.done", **where, part=_text_part(self.text)),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
        response = self._object("completed", output, _usage(native))
        response["completed_at"] = int(time.time())
        events.append(self._event("response.completed", response=response))
        return events
