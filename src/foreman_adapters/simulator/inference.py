"""POST /api/chat and /api/generate on the simulated GPU.

A request is parsed and checked as Ollama does, then runs "in flight": it takes the GPU slot
(swapping models when needed), waits at the hold gate (its model loaded), waits `ttft`, and
emits its token pieces `token_delay` apart. A client that disconnects before the end aborts
it (counted in `aborted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.catalog import COMPLETION, THINKING, TOOLS, SimulatedModel
from foreman_adapters.simulator.faults import MidStreamFailure
from foreman_adapters.simulator.text import (
    count_tokens,
    now_rfc3339,
    reply_pieces,
    thinking_pieces,
    token_ids,
)
from foreman_adapters.simulator.wire import (
    BadRequest,
    Exchange,
    decode_request,
    encode,
    parse_keep_alive,
)

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

CHAT = "chat"
GENERATE = "generate"

_REQUEST_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    CHAT: {"model": str, "messages": list, "stream": bool, "options": dict, "tools": list},
    GENERATE: {"model": str, "prompt": str, "stream": bool, "options": dict, "system": str},
}
_GO_TYPES = {CHAT: "ChatRequest", GENERATE: "GenerateRequest"}


@dataclass(frozen=True)
class Plan:
    """What one chat or generate request will do and say."""

    kind: str
    requested: str
    model: SimulatedModel
    stream: bool
    keep_alive: float | None
    options: Mapping[str, Any] | None
    prompt: str = ""
    pieces: Sequence[str] = ()
    thinking: Sequence[str] = ()
    tool_calls: Sequence[dict[str, Any]] = ()
    done_reason: str = "stop"
    load_only: bool = False
    unload: bool = False


@dataclass
class Outcome:
    """Set once the response's fate is sealed, so a disconnect after it is not an abort."""

    settled: bool = False
    started_ns: int = field(default_factory=time.perf_counter_ns)


async def handle_inference(sim: SimulatedOllama, ex: Exchange, kind: str) -> None:
    """Serve one chat or generate request, faults first."""
    if sim.faults.take_drop():
        await drop(ex)
        return
    failure = sim.faults.take_failure()
    if failure is not None:
        headers = (
            [] if failure.retry_after is None else [("Retry-After", f"{failure.retry_after:g}")]
        )
        await ex.reply(failure.status, failure.body, failure.content_type, headers)
        return
    plan = plan_request(sim, ex.body, kind)
    if plan.unload:
        sim.gpu.unload(plan.model)
        await ex.reply_json(_empty_reply(plan, "unload"))
        return
    await _run_in_flight(sim, ex, plan, lambda outcome: _serve(sim, ex, plan, outcome))


async def drop(ex: Exchange, *, refused: bool = False) -> None:
    """Reset the connection without answering."""
    ex.reset_connection(refused=refused)
    await ex.wait_disconnect()


def plan_request(sim: SimulatedOllama, body: bytes, kind: str) -> Plan:
    """Parse and check a request as Ollama does; raises `BadRequest`."""
    request = decode_request(body, _GO_TYPES[kind], _REQUEST_FIELDS[kind])
    requested = request.get("model") or ""
    if not requested:
        raise BadRequest(400, "model is required")
    model = sim.library.find(requested)
    if model is None:
        raise BadRequest(404, f"model '{requested}' not found")
    keep_alive = parse_keep_alive(request.get("keep_alive"))
    messages = request.get("messages") or []
    prompt = _prompt_of(kind, request)
    base: dict[str, Any] = {
        "kind": kind,
        "requested": requested,
        "model": model,
        "stream": request.get("stream") is not False,
        "keep_alive": keep_alive,
        "options": request.get("options"),
        "prompt": prompt,
    }
    empty = not messages if kind == CHAT else not request.get("prompt")
    if empty and keep_alive == 0:
        return Plan(**base, unload=True)
    _check_capabilities(kind, requested, model, request)
    if empty:
        return Plan(**base, load_only=True)
    return _planned_reply(sim, base, request)


def _prompt_of(kind: str, request: Mapping[str, Any]) -> str:
    """The text the reply is derived from: the prompt, or the last message's content."""
    if kind == GENERATE:
        return str(request.get("prompt") or "")
    messages = request.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return str(last.get("content") or "")


def _check_capabilities(
    kind: str, requested: str, model: SimulatedModel, request: Mapping[str, Any]
) -> None:
    if COMPLETION not in model.capabilities:
        raise BadRequest(400, f'"{requested}" does not support {kind}')
    think = request.get("think")
    if think not in (None, False) and THINKING not in model.capabilities:
        raise BadRequest(400, f'"{requested}" does not support thinking')
    if request.get("tools") and TOOLS not in model.capabilities:
        raise BadRequest(400, f"registry.ollama.ai/library/{model.name} does not support tools")


def _planned_reply(sim: SimulatedOllama, base: dict[str, Any], request: Mapping[str, Any]) -> Plan:
    model: SimulatedModel = base["model"]
    prompt: str = base["prompt"]
    count, done_reason = sim.tokens, "stop"
    num_predict = (request.get("options") or {}).get("num_predict")
    if isinstance(num_predict, int) and 0 < num_predict < count:
        count, done_reason = num_predict, "length"
    pieces = reply_pieces(model.key, prompt, count)
    if request.get("format") is not None:
        pieces = _formatted(request["format"], "".join(pieces), count)
    thinking: list[str] = []
    if THINKING in model.capabilities and request.get("think") is not False:
        thinking = thinking_pieces(model.key, prompt, max(1, sim.tokens // 2))
    tool_calls = _tool_calls(base["kind"], request)
    if tool_calls:
        pieces = []
    return Plan(
        **base, pieces=pieces, thinking=thinking, tool_calls=tool_calls, done_reason=done_reason
    )


def _formatted(schema: Any, text: str, count: int) -> list[str]:
    """Structured output: a JSON object (fitting the schema's properties), cut into pieces."""
    value = _sample(schema, text) if isinstance(schema, dict) else {"answer": text}
    document = encode(value).decode()
    size = max(1, -(-len(document) // max(1, count)))
    return [document[i : i + size] for i in range(0, len(document), size)]


def _sample(schema: Mapping[str, Any], text: str) -> Any:
    """A value of the JSON schema's type: strings get the reply text."""
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _sample(sub, text) for name, sub in properties.items()}
    if schema.get("enum"):
        return schema["enum"][0]
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(
        str(kind), text
    )


def _tool_calls(kind: str, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """With tools offered to a chat and no tool answer yet, call the first tool."""
    tools = request.get("tools") or []
    messages = request.get("messages") or []
    last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
    if kind != CHAT or not tools or last_role == "tool":
        return []
    first = tools[0] if isinstance(tools[0], dict) else {}
    function = first.get("function") or {}
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    arguments = {
        name: _sample(properties.get(name) or {}, "example")
        for name in parameters.get("required") or []
    }
    name = str(function.get("name") or "tool")
    call_id = "call_" + hashlib.sha256(encode(request.get("messages"))).hexdigest()[:8]
    return [{"id": call_id, "function": {"index": 0, "name": name, "arguments": arguments}}]


async def _run_in_flight(
    sim: SimulatedOllama,
    ex: Exchange,
    plan: Plan,
    work: Callable[[Outcome], Awaitable[None]],
) -> None:
    """Run `work`, aborting it when the client disconnects before its response is sealed."""
    sim.enter_generate()
    outcome = Outcome()
    task = asyncio.ensure_future(work(outcome))
    watcher = asyncio.ensure_future(ex.wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and not outcome.settled:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sim.record(plan, "aborted")
            return
        await task
    finally:
        task.cancel()
        watcher.cancel()
        sim.leave_generate()


async def _serve(sim: SimulatedOllama, ex: Exchange, plan: Plan, outcome: Outcome) -> None:
    load_ns = await sim.gpu.acquire(plan.model, plan.options)
    try:
        await sim.hold_gate()
        if plan.load_only:
            outcome.settled = True
            await ex.reply_json(_empty_reply(plan, "load"))
        elif plan.stream:
            await _stream(sim, ex, plan, outcome, load_ns)
        else:
            await _whole(sim, ex, plan, outcome, load_ns)
    finally:
        sim.gpu.release(plan.keep_alive)


async def _stream(
    sim: SimulatedOllama, ex: Exchange, plan: Plan, outcome: Outcome, load_ns: int
) -> None:
    fault = sim.faults.take_mid_stream()
    await asyncio.sleep(sim.ttft)
    prompt_ns = time.perf_counter_ns()
    await ex.start_stream()
    lines = _chunks(plan)
    for index, line in enumerate(lines):
        if fault is not None and index == fault.after_chunks:
            await _break_stream(sim, ex, plan, outcome, fault)
            return
        if index:
            await asyncio.sleep(sim.token_delay)
        await ex.write_line(line)
    if fault is not None:
        await _break_stream(sim, ex, plan, outcome, fault)
        return
    outcome.settled = True
    await ex.write_line(_final(plan, outcome.started_ns, load_ns, prompt_ns))
    await ex.end_stream()
    sim.record(plan, "done")


async def _break_stream(
    sim: SimulatedOllama, ex: Exchange, plan: Plan, outcome: Outcome, fault: MidStreamFailure
) -> None:
    outcome.settled = True
    sim.record(plan, "failed")
    if fault.error is None:
        ex.close_connection()
        await ex.wait_disconnect()
        return
    await ex.write_line({"error": fault.error})
    await ex.end_stream()


async def _whole(
    sim: SimulatedOllama, ex: Exchange, plan: Plan, outcome: Outcome, load_ns: int
) -> None:
    await asyncio.sleep(sim.ttft)
    prompt_ns = time.perf_counter_ns()
    pieces = len(plan.pieces) + len(plan.thinking) + (1 if plan.tool_calls else 0)
    await asyncio.sleep(sim.token_delay * max(0, pieces - 1))
    reply = _final(plan, outcome.started_ns, load_ns, prompt_ns)
    if plan.kind == CHAT:
        reply["message"] = _message("".join(plan.pieces), "".join(plan.thinking), plan.tool_calls)
    else:
        reply["response"] = "".join(plan.pieces)
        if plan.thinking:
            reply = _with_thinking(reply, "".join(plan.thinking))
    outcome.settled = True
    await ex.reply_json(reply)
    sim.record(plan, "done")


def _chunks(plan: Plan) -> list[dict[str, Any]]:
    """Every line of a stream before the final one."""
    lines = [_chunk(plan, thinking=piece) for piece in plan.thinking]
    lines += [_chunk(plan, content=piece) for piece in plan.pieces]
    if plan.tool_calls:
        lines.append(_chunk(plan, tool_calls=plan.tool_calls))
    return lines


def _chunk(
    plan: Plan, content: str = "", thinking: str = "", tool_calls: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    head: dict[str, Any] = {"model": plan.requested, "created_at": now_rfc3339()}
    if plan.kind == CHAT:
        head["message"] = _message(content, thinking, tool_calls)
    else:
        head["response"] = content
        if thinking:
            head["thinking"] = thinking
    head["done"] = False
    return head


def _message(content: str, thinking: str, tool_calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An assistant message; `thinking` and `tool_calls` only when non-empty, as Ollama omits."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    return message


def _with_thinking(reply: dict[str, Any], thinking: str) -> dict[str, Any]:
    """Put `thinking` right after `response`, where Go's struct order puts it."""
    ordered: dict[str, Any] = {}
    for key, value in reply.items():
        ordered[key] = value
        if key == "response":
            ordered["thinking"] = thinking
    return ordered


def _final(plan: Plan, started_ns: int, load_ns: int, prompt_ns: int) -> dict[str, Any]:
    """The closing object: done, the reason, and the metrics in nanoseconds."""
    now = time.perf_counter_ns()
    reply: dict[str, Any] = {"model": plan.requested, "created_at": now_rfc3339()}
    if plan.kind == CHAT:
        reply["message"] = _message("", "", ())
    else:
        reply["response"] = ""
    reply["done"] = True
    reply["done_reason"] = plan.done_reason
    if plan.kind == GENERATE:
        reply["context"] = token_ids(plan.prompt + "".join(plan.pieces))
    eval_count = len(plan.pieces) + len(plan.thinking) + len(plan.tool_calls)
    reply.update(
        total_duration=max(1, now - started_ns),
        load_duration=max(1, load_ns),
        prompt_eval_count=count_tokens(plan.prompt),
        prompt_eval_duration=max(1, prompt_ns - started_ns - load_ns),
        eval_count=eval_count,
        eval_duration=max(1, now - prompt_ns),
    )
    return reply


def _empty_reply(plan: Plan, reason: str) -> dict[str, Any]:
    """Ollama's answer to a load (`messages: []`, empty prompt) or unload (`keep_alive: 0`)."""
    reply: dict[str, Any] = {"model": plan.requested, "created_at": now_rfc3339()}
    if plan.kind == CHAT:
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    reply["done"] = True
    reply["done_reason"] = reason
    return reply
