"""The simulated Ollama speaks Ollama's OpenAI and Anthropic layers: the real `openai` and
`anthropic` SDKs work against it, the bytes follow ollama's openai/, anthropic/ and middleware/
sources, and a dialect request runs on the simulated GPU exactly as a native one does."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import openai
import pytest

from foreman_adapters.simulator import SimulatedOllama, serve_simulator

pytestmark = pytest.mark.anyio

PROMPT = "Why is the sky blue?"
USER: list[Any] = [{"role": "user", "content": PROMPT}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def sim() -> SimulatedOllama:
    return SimulatedOllama(tokens=6)


@pytest.fixture
async def oai(sim: SimulatedOllama) -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama/v1") as http:
        yield openai.AsyncOpenAI(
            api_key="unused", base_url="http://ollama/v1", http_client=http, max_retries=0
        )


@pytest.fixture
async def claude(sim: SimulatedOllama) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # anthropic 2.x accepts only httpx2 clients; httpx2 ships the same ASGI transport.
    transport = httpx2.ASGITransport(app=sim)
    async with httpx2.AsyncClient(transport=transport, base_url="http://ollama") as http:
        yield anthropic.AsyncAnthropic(
            api_key="unused", base_url="http://ollama", http_client=http, max_retries=0
        )


@pytest.fixture
async def http(sim: SimulatedOllama) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as raw:
        yield raw


def events_of(body: str) -> list[tuple[str | None, str]]:
    """Server-sent events as (event name, data), checking the framing: blank-line separated,
    at most one `event:` line and exactly one `data:` line each."""
    assert body.endswith("\n\n")
    events = []
    for frame in body[:-2].split("\n\n"):
        lines = frame.split("\n")
        name = lines.pop(0).removeprefix("event: ") if lines[0].startswith("event: ") else None
        (data,) = lines
        assert data.startswith("data: ")
        events.append((name, data.removeprefix("data: ")))
    return events


# -- OpenAI: chat completions -----------------------------------------------------------------


async def test_chat_completion_is_the_native_reply(
    oai: openai.AsyncOpenAI, sim: SimulatedOllama
) -> None:
    reply = await oai.chat.completions.create(model="llama3.2", messages=USER)
    choice = reply.choices[0]
    assert choice.message.content == sim.reply("llama3.2", PROMPT)
    assert (choice.message.role, choice.finish_reason) == ("assistant", "stop")
    assert (reply.object, reply.model, reply.system_fingerprint) == (
        "chat.completion",
        "llama3.2",
        "fp_ollama",
    )
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


async def test_chat_streams_deltas_then_a_finish_chunk_then_usage(
    oai: openai.AsyncOpenAI, sim: SimulatedOllama
) -> None:
    stream = await oai.chat.completions.create(
        model="qwen3:0.6b",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant" and all(d.role is None for d in deltas[1:])
    reasoning = "".join(getattr(d, "reasoning", None) or "" for d in deltas)
    assert reasoning == sim.thinking("qwen3:0.6b", PROMPT)
    assert "".join(d.content or "" for d in deltas) == sim.reply("qwen3:0.6b", PROMPT)
    finish = chunks[-2].choices[0]
    assert finish.finish_reason == "stop" and finish.delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6 + 3  # the reply and the thinking
    assert len({chunk.created for chunk in chunks}) == 1  # one timestamp for the stream


async def test_chat_stream_bytes(http: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": USER, "stream": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    events = events_of(response.text)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    first = json.loads(events[0][1])
    (choice,) = first["choices"]
    assert list(choice) == ["index", "delta", "finish_reason"] and choice["finish_reason"] is None
    assert list(choice["delta"]) == ["role", "content"] and choice["delta"]["role"] == "assistant"
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert "usage" not in json.loads(events[-2][1])  # no usage unless asked


async def test_chat_defaults_to_one_json_object(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json={"model": "llama3.2", "messages": USER})
    assert response.headers["content-type"] == "application/json"
    assert response.content.endswith(b"}\n")  # Go's json.Encoder
    assert response.json()["object"] == "chat.completion"


async def test_chat_tool_calls_and_the_answer_after_them(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model="llama3.2", messages=USER, tools=[WEATHER])
    choice = reply.choices[0]
    (call,) = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example"}
    answered = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    after = await oai.chat.completions.create(model="llama3.2", messages=answered, tools=[WEATHER])
    assert after.choices[0].message.tool_calls is None
    assert after.choices[0].finish_reason == "stop"


async def test_chat_streams_tool_calls(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="llama3.2", messages=USER, tools=[WEATHER], stream=True
    )
    chunks = [chunk async for chunk in stream]
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_max_tokens_is_num_predict(oai: openai.AsyncOpenAI, sim: SimulatedOllama) -> None:
    reply = await oai.chat.completions.create(model="llama3.2", messages=USER, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == sim.reply("llama3.2", PROMPT, tokens=2)


async def test_openai_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(model="nope", messages=USER)
    assert missing.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError, match=r"\[\] is too short - 'messages'"):
        await oai.chat.completions.create(model="llama3.2", messages=[])
    with pytest.raises(openai.BadRequestError, match=r'"llama3\.2" does not support thinking'):
        await oai.chat.completions.create(model="llama3.2", messages=USER, reasoning_effort="low")
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        await oai.chat.completions.create(model="gemma3:1b", messages=USER, tools=[WEATHER])


@pytest.mark.parametrize(
    ("body", "status", "content_type", "payload"),
    [
        (b"{nope", 400, "application/json; charset=utf-8",
         b'{"error":{"message":"invalid character \'n\' looking for beginning of value",'
         b'"type":"invalid_request_error","param":null,"code":null}}'),
        (b"", 400, "application/json; charset=utf-8",
         b'{"error":{"message":"EOF","type":"invalid_request_error","param":null,"code":null}}'),
        (b'{"messages":[{"role":"user","content":"hi"}]}', 400, "application/json",
         b'{"error":{"message":"model is required","type":"invalid_request_error",'
         b'"param":null,"code":null}}\n'),
        (b'{"model":"x","messages":[{"role":"user"}]}', 400, "application/json; charset=utf-8",
         b'{"error":{"message":"invalid message content type: \\u003cnil\\u003e",'
         b'"type":"invalid_request_error","param":null,"code":null}}'),
    ],
)  # fmt: skip
async def test_openai_error_bytes(
    http: httpx.AsyncClient, body: bytes, status: int, content_type: str, payload: bytes
) -> None:
    """Middleware errors go out as gin's c.JSON (charset, no newline), handler errors through
    the writer (plain application/json and json.Encoder's newline)."""
    response = await http.post("/v1/chat/completions", content=body)
    assert (response.status_code, response.headers["content-type"]) == (status, content_type)
    assert json.loads(response.content) == json.loads(payload)
    assert response.content.endswith(b"\n") == payload.endswith(b"\n")


async def test_faults_come_out_in_the_dialect(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    sim.fail_next(status=503, body="server busy, please try again.  maximum pending requests")
    with pytest.raises(openai.InternalServerError) as busy:
        await oai.chat.completions.create(model="llama3.2", messages=USER)
    assert busy.value.status_code == 503
    assert busy.value.body["type"] == "api_error"
    sim.fail_mid_stream(after_chunks=2, error="model runner has unexpectedly stopped")
    body = {"model": "llama3.2", "messages": USER, "stream": True}
    events = events_of((await http.post("/v1/chat/completions", json=body)).text)
    # Ollama's ChatWriter reads the in-band error line as an empty chunk: no finish, no [DONE].
    assert len(events) == 3 and events[-1][1] != "[DONE]"
    assert json.loads(events[-1][1])["choices"][0]["delta"] == {"content": ""}


# -- OpenAI: completions, embeddings, models --------------------------------------------------


async def test_completions_streamed_and_not(oai: openai.AsyncOpenAI, sim: SimulatedOllama) -> None:
    whole = await oai.completions.create(model="gemma3:1b", prompt="Hello")
    assert whole.choices[0].text == sim.reply("gemma3:1b", "Hello")
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "stop"
    stream = await oai.completions.create(
        model="gemma3:1b", prompt="Hello", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == sim.reply(
        "gemma3:1b", "Hello"
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage and c.usage.total_tokens == 0 for c in chunks[:-1])  # Ollama's zeros


async def test_embeddings_are_the_native_vectors(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    native = await http.post("/api/embed", json={"model": "all-minilm", "input": ["a", "b"]})
    vectors = native.json()["embeddings"]
    listed = await oai.embeddings.create(
        model="all-minilm", input=["a", "b"], encoding_format="float"
    )
    assert [d.embedding for d in listed.data] == vectors and [d.index for d in listed.data] == [
        0,
        1,
    ]
    assert listed.usage.prompt_tokens == listed.usage.total_tokens == 2
    packed = await http.post(
        "/v1/embeddings", json={"model": "all-minilm", "input": "a", "encoding_format": "base64"}
    )
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(vectors[0], rel=1e-6)
    with pytest.raises(openai.BadRequestError, match="Supported values: \\['float', 'base64'\\]"):
        await oai.embeddings.create(model="all-minilm", input="a", encoding_format="hex")
    with pytest.raises(openai.NotFoundError, match='model "nope" not found, try pulling it first'):
        await oai.embeddings.create(model="nope", input="a", encoding_format="float")


async def test_models_list_and_retrieve(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    tags = (await http.get("/api/tags")).json()["models"]
    listed = (await oai.models.list()).data
    assert [m.id for m in listed] == [t["model"] for t in tags]
    assert {(m.object, m.owned_by) for m in listed} == {("model", "library")}
    one = await oai.models.retrieve("qwen3:0.6b")
    assert (one.id, one.created) == ("qwen3:0.6b", listed[3].created)
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        await oai.models.retrieve("nope")


# -- OpenAI: responses ------------------------------------------------------------------------


async def test_responses_whole(oai: openai.AsyncOpenAI, sim: SimulatedOllama) -> None:
    response = await oai.responses.create(
        model="qwen3:0.6b", input=PROMPT, instructions="Be brief.", max_output_tokens=50
    )
    assert response.output_text == sim.reply("qwen3:0.6b", PROMPT)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.summary[0].text == sim.thinking("qwen3:0.6b", PROMPT)
    assert (response.status, response.instructions, response.max_output_tokens) == (
        "completed",
        "Be brief.",
        50,
    )
    assert response.previous_response_id is None and response.store is False
    assert response.usage is not None and response.usage.output_tokens == 9


async def test_responses_stream_named_events_in_sequence(
    oai: openai.AsyncOpenAI, sim: SimulatedOllama, http: httpx.AsyncClient
) -> None:
    async with oai.responses.stream(model="llama3.2", input=PROMPT) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == sim.reply("llama3.2", PROMPT)
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 6 and kinds[-1] == "response.completed"
    raw = await http.post(
        "/v1/responses", json={"model": "llama3.2", "input": "hi", "stream": True}
    )
    assert raw.headers["cache-control"] == "no-cache"
    events = events_of(raw.text)
    payloads = [json.loads(data) for _, data in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert all(name == p["type"] for (name, _), p in zip(events, payloads, strict=True))
    assert all(list(p) == sorted(p) for p in payloads)  # Go marshals the maps key-sorted


async def test_responses_function_calls_and_their_outputs(oai: openai.AsyncOpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": None,
        "strict": None,
        "parameters": WEATHER["function"]["parameters"],
    }
    first = await oai.responses.create(model="llama3.2", input=PROMPT, tools=[tool])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "example"}
    follow_up = [
        {"role": "user", "content": PROMPT},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = await oai.responses.create(model="llama3.2", input=follow_up, tools=[tool])
    assert second.output[0].type == "message" and second.output_text


async def test_responses_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        await oai.responses.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError, match="unknown input item type"):
        await oai.responses.create(model="llama3.2", input=[{"type": "nonsense"}])


# -- Anthropic --------------------------------------------------------------------------------


async def test_messages_whole(claude: anthropic.AsyncAnthropic, sim: SimulatedOllama) -> None:
    message = await claude.messages.create(model="qwen3:0.6b", max_tokens=100, messages=USER)
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert thinking.thinking == sim.thinking("qwen3:0.6b", PROMPT)
    assert text.text == sim.reply("qwen3:0.6b", PROMPT)
    assert (message.role, message.stop_reason, message.model) == (
        "assistant",
        "end_turn",
        "qwen3:0.6b",
    )
    assert message.id.startswith("msg_") and message.usage.output_tokens == 9


async def test_messages_stream(claude: anthropic.AsyncAnthropic, sim: SimulatedOllama) -> None:
    async with claude.messages.stream(
        model="llama3.2", max_tokens=100, system="Be brief.", messages=USER
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert [block.text for block in final.content] == [sim.reply("llama3.2", PROMPT)]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6
    assert "ping" not in kinds  # Ollama sends none


async def test_messages_stream_bytes(http: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "max_tokens": 9, "messages": USER, "stream": True}
    response = await http.post("/v1/messages", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    events = [(name, json.loads(data)) for name, data in events_of(response.text)]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and "stop_reason" not in start
    assert start["usage"] == {"input_tokens": len("user" + PROMPT) // 4, "output_tokens": 0}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": 5, "output_tokens": 6},
    }


async def test_messages_tool_use_and_result(claude: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    first = await claude.messages.create(
        model="llama3.2", max_tokens=100, messages=USER, tools=[tool]
    )
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "example"}
    assert first.stop_reason == "tool_use"
    answered = [
        *USER,
        {"role": "assistant", "content": [use.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    second = await claude.messages.create(
        model="llama3.2", max_tokens=100, messages=answered, tools=[tool]
    )
    assert [block.type for block in second.content] == ["text"]
    async with claude.messages.stream(
        model="llama3.2", max_tokens=100, messages=USER, tools=[tool]
    ) as stream:
        streamed = await stream.get_final_message()
    assert streamed.content[0].input == {"city": "example"}


async def test_messages_max_tokens_and_relaxed_thinking(
    claude: anthropic.AsyncAnthropic, sim: SimulatedOllama
) -> None:
    short = await claude.messages.create(model="llama3.2", max_tokens=2, messages=USER)
    assert short.stop_reason == "max_tokens"
    assert short.content[0].text == sim.reply("llama3.2", PROMPT, tokens=2)
    # Thinking asked of a model that cannot think is dropped for Anthropic clients, not refused.
    relaxed = await claude.messages.create(
        model="llama3.2",
        max_tokens=100,
        messages=USER,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [block.type for block in relaxed.content] == ["text"]


async def test_anthropic_errors(claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nope", max_tokens=10, messages=USER)
    body: Any = missing.value.body
    assert body["type"] == "error"
    assert body["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
    assert body["request_id"].startswith("req_")
    for request, message in [
        ({"model": "llama3.2", "messages": USER}, "max_tokens is required and must be positive"),
        ({"model": "llama3.2", "max_tokens": 5, "messages": []}, "messages is required"),
        ({"max_tokens": 5, "messages": USER}, "model is required"),
    ]:
        refused = await http.post("/v1/messages", json=request)
        assert refused.status_code == 400
        assert refused.json()["error"] == {"type": "invalid_request_error", "message": message}


# -- the one GPU ------------------------------------------------------------------------------


async def test_dialect_requests_load_and_swap_like_native_ones(
    oai: openai.AsyncOpenAI,
    claude: anthropic.AsyncAnthropic,
    http: httpx.AsyncClient,
    sim: SimulatedOllama,
) -> None:
    await oai.chat.completions.create(model="llama3.2", messages=USER)
    await claude.messages.create(model="gemma3:1b", max_tokens=10, messages=USER)
    await oai.responses.create(model="gemma3:1b", input=PROMPT)
    await oai.completions.create(model="llama3.2", prompt="Hello")
    assert sim.swaps == 3 and sim.resident == "llama3.2:latest"
    assert sim.completed == ["llama3.2:latest", "gemma3:1b", "gemma3:1b", "llama3.2:latest"]
    # Ollama's layers pass no load options: a model loaded with num_ctx 8192 is reloaded.
    native = {"model": "llama3.2", "messages": USER, "stream": False, "options": {"num_ctx": 8192}}
    await http.post("/api/chat", json=native)
    assert sim.swaps == 4
    await oai.chat.completions.create(model="llama3.2", messages=USER)
    assert sim.swaps == 5
    assert (await http.get("/api/ps")).json()["models"][0]["context_length"] == 4096
    await oai.embeddings.create(model="all-minilm", input="x", encoding_format="float")
    assert sim.swaps == 5  # embedders sit beside the resident model


async def test_a_dialect_request_waits_at_the_hold_gate(
    claude: anthropic.AsyncAnthropic, oai: openai.AsyncOpenAI, sim: SimulatedOllama
) -> None:
    sim.hold()
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: claude.messages.create(model="llama3.2", max_tokens=5, messages=USER)
        )
        group.start_soon(lambda: oai.chat.completions.create(model="llama3.2", messages=USER))
        await sim.wait_for_held(2)
        assert sim.inflight_generate == 2 and sim.completed == []
        sim.release()
    assert sim.completed == ["llama3.2:latest"] * 2 and sim.swaps == 1


async def test_a_dialect_stream_flushes_per_line_and_a_disconnect_aborts_it(
    sim: SimulatedOllama,
) -> None:
    sim.token_delay = 60.0
    body = {"model": "llama3.2", "max_tokens": 9, "messages": USER, "stream": True}
    async with serve_simulator(sim) as running, httpx.AsyncClient(base_url=running.url) as http:
        with anyio.fail_after(10):
            async with http.stream("POST", "/v1/messages", json=body) as response:
                first = await anext(response.aiter_text())
            await sim.wait_for(lambda: sim.aborted == 1)
    assert first.startswith("event: message_start\n")
    assert [g.outcome for g in sim.generations] == ["aborted"]
