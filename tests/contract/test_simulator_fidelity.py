"""The simulated Ollama is faithful: the official `ollama` client does everything real clients
depend on, and the bytes on the wire follow Ollama's rules (shared/spec/ollama-wire.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import ollama
import pytest

from foreman_adapters.simulator import DEFAULT_MODELS, SimulatedOllama, serve_simulator

pytestmark = pytest.mark.anyio

CHAT_MODEL = "llama3.2"
JSON_UTF8 = "application/json; charset=utf-8"
USER = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def sim() -> SimulatedOllama:
    return SimulatedOllama(tokens=6)


@pytest.fixture
async def client(sim: SimulatedOllama) -> AsyncIterator[ollama.AsyncClient]:
    yield ollama.AsyncClient(host="http://ollama", transport=httpx.ASGITransport(app=sim))


@pytest.fixture
async def http(sim: SimulatedOllama) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as raw:
        yield raw


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    """NDJSON lines, checked to be compact JSON, one per line, no blank lines."""
    body = response.content.decode()
    assert body.endswith("\n")
    lines = body.split("\n")[:-1]
    assert all(lines), "no blank lines"
    parsed = [json.loads(line) for line in lines]
    for line, value in zip(lines, parsed, strict=True):
        assert line == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return parsed


# -- the official client ----------------------------------------------------------------------


async def test_list_shows_every_model_with_its_details(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == [m.name for m in DEFAULT_MODELS]
    assert all(m.details and m.details.format == "gguf" and m.modified_at for m in listed.models)


async def test_ps_shows_the_model_a_chat_loaded(client: ollama.AsyncClient) -> None:
    assert (await client.ps()).models == []
    await client.chat(model=CHAT_MODEL, messages=USER)
    loaded = (await client.ps()).models
    assert [m.model for m in loaded] == ["llama3.2:latest"]
    assert loaded[0].expires_at is not None and loaded[0].context_length == 4096


async def test_show_answers_model_info_and_capabilities(client: ollama.AsyncClient) -> None:
    shown = await client.show(CHAT_MODEL)
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == 131072
    assert shown.capabilities == ["completion", "tools"]


async def test_version(client: ollama.AsyncClient) -> None:
    assert (await client._client.get("/api/version")).json() == {"version": "0.12.6"}


async def test_chat_streams_the_deterministic_reply(
    client: ollama.AsyncClient, sim: SimulatedOllama
) -> None:
    parts = [part async for part in await client.chat(model=CHAT_MODEL, messages=USER, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == sim.reply(
        CHAT_MODEL, USER[0]["content"]
    )
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 6 and parts[-1].total_duration


async def test_chat_without_streaming(client: ollama.AsyncClient, sim: SimulatedOllama) -> None:
    reply = await client.chat(model=CHAT_MODEL, messages=USER)
    assert reply.message.content == sim.reply(CHAT_MODEL, USER[0]["content"])
    assert reply.model == CHAT_MODEL  # echoed as requested, not normalised


async def test_generate_streams_and_not(client: ollama.AsyncClient, sim: SimulatedOllama) -> None:
    expected = sim.reply("gemma3:1b", "Hello")
    streamed = [p async for p in await client.generate("gemma3:1b", "Hello", stream=True)]
    assert "".join(p.response or "" for p in streamed) == expected
    assert streamed[-1].done and streamed[-1].context
    whole = await client.generate("gemma3:1b", "Hello")
    assert whole.response == expected


async def test_a_thinking_model_thinks_first(
    client: ollama.AsyncClient, sim: SimulatedOllama
) -> None:
    reply = await client.chat(model="qwen3:0.6b", messages=USER, think=True)
    assert reply.message.thinking == sim.thinking("qwen3:0.6b", USER[0]["content"])
    assert reply.message.content == sim.reply("qwen3:0.6b", USER[0]["content"])
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="gemma3:1b", messages=USER, think=True)
    assert caught.value.status_code == 400
    assert caught.value.error == '"gemma3:1b" does not support thinking'


async def test_a_model_offered_tools_calls_the_first_one(client: ollama.AsyncClient) -> None:
    def get_weather(city: str) -> str:
        """Get the weather in a city.

        Args:
            city: The city.
        """
        return "sunny"

    reply = await client.chat(model=CHAT_MODEL, messages=USER, tools=[get_weather])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "example"}


async def test_embed_takes_a_string_or_a_list(client: ollama.AsyncClient) -> None:
    one = await client.embed("all-minilm", "hello")
    two = await client.embed("all-minilm", ["hello", "world"])
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 384
    assert two.embeddings[0] == one.embeddings[0] and two.embeddings[1] != one.embeddings[0]
    legacy = await client.embeddings(model="all-minilm", prompt="hello")
    assert len(legacy.embedding) == 384


async def test_pull_copy_delete(client: ollama.AsyncClient) -> None:
    progress = [p async for p in await client.pull("phi3:mini", stream=True)]
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert (await client.copy("phi3:mini", "my-phi")).status == "success"
    names = [m.model for m in (await client.list()).models]
    assert names[:2] == ["my-phi:latest", "phi3:mini"]
    assert (await client.delete("my-phi")).status == "success"
    assert "my-phi:latest" not in [m.model for m in (await client.list()).models]
    assert (await client.pull("phi3:mini")).status == "success"


async def test_create_and_push_stream_to_success(client: ollama.AsyncClient) -> None:
    created = [p async for p in await client.create("mine", from_=CHAT_MODEL, stream=True)]
    assert created[-1].status == "success"
    assert (await client.show("mine")).details.family == "llama"  # type: ignore[union-attr]
    pushed = [p async for p in await client.push("mine", stream=True)]
    assert pushed[-1].status == "success"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.chat(model="nope", messages=USER), "model 'nope' not found"),
        (lambda c: c.generate("nope:7b", "hi"), "model 'nope:7b' not found"),
        (lambda c: c.show("nope"), "model 'nope' not found"),
        (lambda c: c.delete("nope"), "model 'nope' not found"),
        (lambda c: c.embed("nope", "hi"), 'model "nope" not found, try pulling it first'),
        (
            lambda c: c.embeddings(model="nope", prompt="hi"),
            'model "nope" not found, try pulling it first',
        ),
    ],
)
async def test_unknown_models_raise_ollamas_404(
    client: ollama.AsyncClient, call: Any, message: str
) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await call(client)
    assert (caught.value.status_code, caught.value.error) == (404, message)


async def test_a_streamed_chat_for_an_unknown_model_raises_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        async for _ in await client.chat(model="nope", messages=USER, stream=True):
            pass
    assert (caught.value.status_code, caught.value.error) == (404, "model 'nope' not found")


async def test_an_in_band_stream_error_raises_in_the_client(
    client: ollama.AsyncClient, sim: SimulatedOllama
) -> None:
    sim.fail_mid_stream(after_chunks=1, error="model runner has unexpectedly stopped")
    with pytest.raises(ollama.ResponseError, match="unexpectedly stopped"):
        async for _ in await client.chat(model=CHAT_MODEL, messages=USER, stream=True):
            pass


# -- the wire ---------------------------------------------------------------------------------


async def test_streams_are_compact_ndjson_ending_with_done(http: httpx.AsyncClient) -> None:
    for path, body in [
        ("/api/chat", {"model": CHAT_MODEL, "messages": USER}),  # stream absent means true
        ("/api/generate", {"model": CHAT_MODEL, "prompt": "hi", "stream": True}),
    ]:
        response = await http.post(path, json=body)
        assert response.headers["content-type"] == "application/x-ndjson"
        assert "content-length" not in response.headers
        lines = lines_of(response)
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
        assert all(line["done"] is False for line in lines[:-1])
        assert all(line["created_at"].endswith("Z") for line in lines)


async def test_progress_streams_end_with_success(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/pull", json={"model": "tinyllama"})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert lines_of(response)[-1] == {"status": "success"}


async def test_final_chunk_metrics_are_nanosecond_integers(http: httpx.AsyncClient) -> None:
    body = {"model": CHAT_MODEL, "messages": USER, "stream": False}
    final = (await http.post("/api/chat", json=body)).json()
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert list(final)[:5] == ["model", "created_at", "message", "done", "done_reason"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "content_type", "payload"),
    [
        ("GET", "/", None, 200, "text/plain; charset=utf-8", b"Ollama is running"),
        ("HEAD", "/", None, 200, "text/plain; charset=utf-8", b""),
        ("GET", "/api/nothing", None, 404, "text/plain", b"404 page not found"),
        ("GET", "/api/chat", None, 405, "text/plain", b"405 method not allowed"),
        ("POST", "/api/chat", b"", 400, JSON_UTF8, b'{"error":"missing request body"}'),
        ("POST", "/api/chat", b"{}", 400, JSON_UTF8, b'{"error":"model is required"}'),
        ("POST", "/api/show", b'{"model":""}', 400, JSON_UTF8, b'{"error":"model is required"}'),
        ("POST", "/api/embed", b'{"model":"all-minilm","input":7}', 400, JSON_UTF8,
         b'{"error":"invalid input type"}'),
        ("POST", "/api/chat", b"{nope", 400, JSON_UTF8,
         b"{\"error\":\"invalid character 'n' looking for beginning of value\"}"),
        ("POST", "/api/copy", b'{"source":"gemma3:1b","destination":"g"}', 200, None, b""),
        ("DELETE", "/api/delete", b'{"model":"g"}', 404, JSON_UTF8,
         b"{\"error\":\"model 'g' not found\"}"),
        ("DELETE", "/api/delete", b'{"model":"gemma3:1b"}', 200, None, b""),
    ],
)  # fmt: skip
async def test_status_content_type_and_bytes(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    content_type: str | None,
    payload: bytes,
) -> None:
    response = await http.request(method, path, content=body)
    assert response.status_code == status
    assert response.headers.get("content-type") == content_type
    assert response.content == payload
    assert "server" not in response.headers


async def test_load_and_unload_replies(http: httpx.AsyncClient, sim: SimulatedOllama) -> None:
    load = await http.post("/api/chat", json={"model": "gemma3:1b", "messages": []})
    assert load.headers["content-type"] == JSON_UTF8  # one object even though streaming was asked
    assert load.json()["done_reason"] == "load" and load.json()["message"]["content"] == ""
    assert sim.resident == "gemma3:1b"
    unload = await http.post("/api/generate", json={"model": "gemma3:1b", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload" and unload.json()["response"] == ""
    assert sim.resident is None
    assert (await http.get("/api/ps")).json() == {"models": []}


async def test_embed_with_empty_input_only_loads(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/embed", json={"model": "all-minilm", "input": ""})
    assert response.json() == {"model": "all-minilm", "embeddings": []}
    assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == [
        "all-minilm:latest"
    ]


# -- the one GPU ------------------------------------------------------------------------------


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, "stream": False, **extra}


async def post_chat(http: httpx.AsyncClient, model: str) -> None:
    assert (await http.post("/api/chat", json=chat(model))).status_code == 200


async def test_swaps_count_loads_of_a_model_not_resident(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    for model in ["llama3.2", "llama3.2:latest", "gemma3:1b", "gemma3:1b", "llama3.2"]:
        assert (await http.post("/api/chat", json=chat(model))).status_code == 200
    assert sim.swaps == 3
    await http.post("/api/chat", json=chat("llama3.2", options={"num_ctx": 8192}))
    assert sim.swaps == 4  # new load options reload the same model
    await http.post("/api/embed", json={"model": "all-minilm", "input": "x"})
    assert sim.swaps == 4 and sim.resident == "llama3.2:latest"  # embedders sit beside it
    assert sim.completed == ["llama3.2:latest"] * 2 + ["gemma3:1b"] * 2 + ["llama3.2:latest"] * 2


async def test_hold_keeps_requests_in_flight_until_release(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    sim.hold()
    async with anyio.create_task_group() as group:
        for model in ["llama3.2", "llama3.2"]:
            group.start_soon(post_chat, http, model)
        await sim.wait_for_held(2)
        assert sim.inflight_generate == 2 and sim.completed == []
        sim.release()
    assert sim.max_inflight_generate == 2 and len(sim.completed) == 2


async def test_release_with_a_count_lets_that_many_through_and_goes_on_holding(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    sim.hold()
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(post_chat, http, "llama3.2")
        await sim.wait_for_held(3)
        released = await http.post("/_sim/release", json={"count": 2})
        assert released.status_code == 200
        await sim.wait_for(lambda: len(sim.completed) == 2 and sim.held == 1)
        group.start_soon(post_chat, http, "llama3.2")
        await sim.wait_for_held(2)  # the hold goes on: a newcomer waits too
        sim.release(count=1)
        await sim.wait_for(lambda: len(sim.completed) == 3 and sim.held == 1)
        sim.release()
    assert len(sim.completed) == 4 and sim.held == 0


async def test_a_different_model_waits_for_the_gpu_to_be_idle(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    sim.hold()
    async with anyio.create_task_group() as group:
        group.start_soon(post_chat, http, "llama3.2")
        await sim.wait_for_held(1)
        group.start_soon(post_chat, http, "gemma3:1b")
        await sim.wait_for(lambda: sim.inflight_generate == 2)
        assert sim.held == 1 and sim.resident == "llama3.2:latest"
        sim.release()
    assert sim.completed == ["llama3.2:latest", "gemma3:1b"] and sim.swaps == 2


async def test_a_client_that_disconnects_aborts_its_generation(sim: SimulatedOllama) -> None:
    sim.token_delay = 60.0
    async with serve_simulator(sim) as running, httpx.AsyncClient(base_url=running.url) as http:
        with anyio.fail_after(10):
            async with http.stream("POST", "/api/chat", json=chat("llama3.2", stream=True)) as r:
                async for _ in r.aiter_raw():
                    break
            await sim.wait_for(lambda: sim.aborted == 1)
    assert [g.outcome for g in sim.generations] == ["aborted"]


async def test_faults_through_the_control_api(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    faults = {"fail_next": {"count": 1, "status": 503, "body": "busy", "retry_after": 3}}
    armed = await http.post("/_sim/faults", json=faults)
    assert armed.json()["faults"] == {
        "drop_connections": 0,
        "fail_next": 1,
        "fail_mid_stream": 0,
        "down": False,
    }
    failed = await http.post("/api/chat", json=chat("llama3.2"))
    assert (failed.status_code, failed.headers["retry-after"]) == (503, "3")
    assert failed.json() == {"error": "busy"}
    assert (await http.post("/api/chat", json=chat("llama3.2"))).status_code == 200
    await http.post("/_sim/config", json={"tokens": 3})
    stats = (await http.get("/_sim/stats")).json()
    assert stats["requests"]["/api/chat"] == 2 and stats["swaps"] == 1
    assert sim.tokens == 3
    await http.post("/_sim/reset")
    assert sim.requests == {} and sim.swaps == 0 and sim.tokens == 3


async def test_the_module_runs_as_a_server_process() -> None:
    command = [sys.executable, "-m", "foreman_adapters.simulator", "--port", "0", "--tokens", "3"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=20)
            assert line.startswith("listening on http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=line.split()[-1]) as http:
                assert (await http.get("/")).text == "Ollama is running"
                stats = (await http.get("/_sim/stats")).json()
            assert stats["requests"] == {"/": 1}
        finally:
            process.terminate()
            process.wait(timeout=10)
