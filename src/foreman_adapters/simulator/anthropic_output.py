"""What /v1/messages answers: Ollama's `ToMessagesResponse` and its `StreamConverter`.

A whole message has thinking, text and tool_use blocks, in that order. A stream is named
events: message_start, then content_block_start/delta/stop for each block (thinking, text, one
per tool call), message_delta with the stop reason and the real token counts, message_stop.
"""

from __future__ import annotations

from typing import Any

from foreman_adapters.simulator.dialect import Native, event_frame
from foreman_adapters.simulator.wire import encode

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _stop_reason(done_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    return _STOP_REASONS.get(done_reason, "stop_sequence" if done_reason else "")


def _tool_use(call: Native) -> Native:
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": function.get("arguments") or {},
    }


def _usage(native: Native) -> Native:
    return {
        "input_tokens": native.get("prompt_eval_count") or 0,
        "output_tokens": native.get("eval_count") or 0,
    }


def to_message(message_id: str, native: Native) -> Native:
    """`ToMessagesResponse`: thinking, text and tool_use blocks, in that order."""
    message = native.get("message") or {}
    content: list[Native] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    content += [_tool_use(call) for call in calls]
    reply: Native = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": native.get("model") or "",
        "content": content or None,
    }
    stop_reason = _stop_reason(native.get("done_reason") or "", bool(calls))
    if stop_reason:
        reply["stop_reason"] = stop_reason
    reply["usage"] = _usage(native)
    return reply


class MessageStream:
    """`StreamConverter`: native lines to Messages events, one content block per kind."""

    def __init__(self, message_id: str, model: str, estimated_tokens: int) -> None:
        self.message_id, self.model, self.estimated_tokens = message_id, model, estimated_tokens
        self.started = self.thinking_started = self.thinking_done = self.text_started = False
        self.index = 0
        self.tools_sent: set[str] = set()

    def frames(self, native: Native) -> list[bytes]:
        """The events of one native line."""
        return [event_frame(event["type"], event) for event in self._events(native)]

    def _block(self, kind: str, **fields: Any) -> Native:
        return {"type": kind, "index": self.index, **fields}

    def _close(self) -> Native:
        """Stop the open block; the next one gets the next index."""
        self.index += 1
        return {"type": "content_block_stop", "index": self.index - 1}

    def _events(self, native: Native) -> list[Native]:
        message = native.get("message") or {}
        events: list[Native] = []
        if not self.started:
            self.started = True
            tokens = native.get("prompt_eval_count") or self.estimated_tokens
            start = {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": tokens, "output_tokens": 0},
            }
            events.append({"type": "message_start", "message": start})
        if message.get("thinking") and not self.thinking_done:
            if self.text_started:
                events.append(self._close())
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                block = {"type": "thinking", "thinking": ""}
                events.append(self._block("content_block_start", content_block=block))
            delta = {"type": "thinking_delta", "thinking": message["thinking"]}
            events.append(self._block("content_block_delta", delta=delta))
        if message.get("content"):
            events += self._end_thinking()
            if not self.text_started:
                self.text_started = True
                block = {"type": "text", "text": ""}
                events.append(self._block("content_block_start", content_block=block))
            delta = {"type": "text_delta", "text": message["content"]}
            events.append(self._block("content_block_delta", delta=delta))
        for call in message.get("tool_calls") or []:
            events += self._tool_call(call)
        if native.get("done") is True:
            if self.text_started or (self.thinking_started and not self.thinking_done):
                events.append(self._block("content_block_stop"))
            stop_reason = _stop_reason(native.get("done_reason") or "", bool(self.tools_sent))
            delta = {"stop_reason": stop_reason} if stop_reason else {}
            events.append({"type": "message_delta", "delta": delta, "usage": _usage(native)})
            events.append({"type": "message_stop"})
        return events

    def _end_thinking(self) -> list[Native]:
        if not self.thinking_started or self.thinking_done:
            return []
        self.thinking_done = True
        return [self._close()]

    def _tool_call(self, call: Native) -> list[Native]:
        call_id = str(call.get("id") or "")
        if call_id in self.tools_sent:
            return []
        events = self._end_thinking()
        if self.text_started:
            events.append(self._close())
            self.text_started = False
        block = {**_tool_use(call), "input": {}}
        arguments = encode((call.get("function") or {}).get("arguments") or {}).decode()
        delta = {"type": "input_json_delta", "partial_json": arguments}
        events += [
            self._block("content_block_start", content_block=block),
            self._block("content_block_delta", delta=delta),
            self._close(),
        ]
        self.tools_sent.add(call_id)
        return events
