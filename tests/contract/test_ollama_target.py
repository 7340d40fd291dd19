"""Contract of OllamaTarget: against the simulator in-process (ASGI) and on a socket, and against
a real Ollama when FOREMAN_TEST_OLLAMA_URL is set (FOREMAN_TEST_OLLAMA_MODEL picks its chat model,
else the first installed one that can chat)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from foreman_adapters.aiohttp_transport import AiohttpTransport
from foreman_adapters.ollama import OllamaTarget
from foreman_adapters.simulator import SimulatedOllama, serve_simulator
from foreman_core.errors import (
    TargetBrokeStream,
    TargetBusy,
    TargetRejected,
    TargetUnreachable,
)
from foreman_core.job import normalize_model

pytestmark = pytest.mark.anyio

REAL_OLLAMA_URL = os.environ.get("FOREMAN_TEST_OLLAMA_URL")
SIMULATED = ["asgi", "socket"]
ALL_TARGETS = SIMULATED + (["real"] if REAL_OLLAMA_URL else [])
CHAT_MODEL = "qwen2.5:0.5b"


@dataclass
class Setup:
    """A target under test, and the simulator behind it (None for a real Ollama)."""

    target: OllamaTarget
    sim: SimulatedOllama | None
    model: str
    url: str | None = None


def chat_body(model: str, content: str = "Say hello.", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


async def first_chat_model(target: OllamaTarget) -> str:
    chosen = os.environ.get("FOREMAN_TEST_OLLAMA_MODEL")
    if chosen:
        return chosen
    for entry in (await target.tags())["models"]:
        show = await target.post_json("/api/show", {"model": entry["name"]})
        if "completion" in show.get("capabilities", ["completion"]):
            return entry["name"]
    raise RuntimeError("the real Ollama has no model that can chat")


@pytest.fixture
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    kind = request.param
    if kind == "real":
        async with AiohttpTransport() as transport:
            target = OllamaTarget(transport, REAL_OLLAMA_URL or "")
            yield Setup(target, None, await first_chat_model(target), REAL_OLLAMA_URL)
        return
    sim = SimulatedOllama(tokens=6)
    if kind == "asgi":
        async with httpx.ASGITransport(app=sim) as transport:
            yield Setup(OllamaTarget(transport, "http://ollama"), sim, CHAT_MODEL)
        return
    async with serve_simulator(sim) as running, AiohttpTransport() as transport:
        yield Setup(OllamaTarget(transport, running.url), sim, CHAT_MODEL, running.url)


def each_target(names: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("setup", names, indirect=True)


# -- behaviour every Ollama shows -------------------------------------------------------------


@each_target(ALL_TARGETS)
async def test_a_chat_streams_ndjson_ending_with_a_done_line(setup: Setup) -> None:
    async with setup.target.open("chat", chat_body(setup.model)) as response:
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        raw = b"".join([chunk async for chunk in response.chunks()])
    lines = ndjson(raw)
    assert lines[-1]["done"] is True
    assert all(line["done"] is False for line in lines[:-1])
    assert all(line["model"] == setup.model for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert content
    if setup.sim is not None:
        assert content == setup.sim.reply(setup.model, "Say hello.")


@each_target(ALL_TARGETS)
async def test_a_generate_without_streaming_is_one_json_object(setup: Setup) -> None:
    body = json.dumps({"model": setup.model, "prompt": "Count to three.", "stream": False})
    async with setup.target.open("generate", body.encode()) as response:
        assert response.content_type == "application/json; charset=utf-8"
        raw = b"".join([chunk async for chunk in response.chunks()])
    result = json.loads(raw)
    assert result["done"] is True
    assert isinstance(result["total_duration"], int)
    if setup.sim is not None:
        assert result["response"] == setup.sim.reply(setup.model, "Count to three.")


@each_target(ALL_TARGETS)
async def test_an_unknown_model_is_rejected_with_ollamas_own_body(setup: Setup) -> None:
    with pytest.raises(TargetRejected) as caught:
        async with setup.target.open("chat", chat_body("no-such-model:latest")):
            pytest.fail("an unknown model must not be answered")
    assert caught.value.status == 404
    assert json.loads(caught.value.body) == {"error": "model 'no-such-model:latest' not found"}
    assert caught.value.content_type.startswith("application/json")


@each_target(ALL_TARGETS)
async def test_relay_hands_back_status_content_type_and_bytes(setup: Setup) -> None:
    async with setup.target.relay("GET", "/api/version") as response:
        assert response.status == 200
        assert response.content_type == "application/json; charset=utf-8"
        raw = b"".join([chunk async for chunk in response.chunks()])
    assert set(json.loads(raw)) == {"version"}

    show = json.dumps({"model": "no-such-model:latest"}).encode()
    async with setup.target.relay("POST", "/api/show", show) as response:
        assert response.status == 404
        raw = b"".join([chunk async for chunk in response.chunks()])
    assert json.loads(raw) == {"error": "model 'no-such-model:latest' not found"}

    async with setup.target.relay("GET", "/api/no-such-route") as response:
        assert (response.status, response.content_type) == (404, "text/plain")
        assert b"".join([chunk async for chunk in response.chunks()]) == b"404 page not found"


@each_target(ALL_TARGETS)
async def test_version_tags_and_ps_are_ollamas_objects(setup: Setup) -> None:
    assert isinstance((await setup.target.version())["version"], str)
    tags = await setup.target.tags()
    assert normalize_model(setup.model) in [normalize_model(m["name"]) for m in tags["models"]]
    assert isinstance((await setup.target.ps())["models"], list)


@each_target(ALL_TARGETS)
async def test_leaving_the_block_early_closes_the_response(setup: Setup) -> None:
    body = chat_body(setup.model, "Tell a long story.", options={"num_predict": 64})
    async with setup.target.open("chat", body) as response:
        async for _ in response.chunks():
            break
    # the connection pool is usable afterwards: nothing is left half-read
    assert isinstance((await setup.target.version())["version"], str)


# -- failures only the simulator can stage ----------------------------------------------------


@each_target(SIMULATED)
async def test_503_with_retry_after_is_busy(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.fail_next(status=503, body="server busy", retry_after=7)
    with pytest.raises(TargetBusy) as caught:
        async with setup.target.open("chat", chat_body(setup.model)):
            pytest.fail("a 503 must not be answered")
    assert (caught.value.status, caught.value.retry_after) == (503, 7.0)
    assert json.loads(caught.value.body) == {"error": "server busy"}


@each_target(SIMULATED)
async def test_429_without_retry_after_is_busy_with_no_hint(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.fail_next(status=429, body="slow down")
    with pytest.raises(TargetBusy) as caught:
        async with setup.target.open("generate", b'{"model":"gemma3:1b","prompt":"x"}'):
            pytest.fail("a 429 must not be answered")
    assert (caught.value.status, caught.value.retry_after) == (429, None)


@each_target(SIMULATED)
async def test_other_http_errors_are_rejections_with_status_body_and_type(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.fail_next(status=500, body=b"<html>oops</html>", content_type="text/html")
    with pytest.raises(TargetRejected) as caught:
        async with setup.target.open("chat", chat_body(setup.model)):
            pytest.fail("a 500 must not be answered")
    assert (caught.value.status, caught.value.body) == (500, b"<html>oops</html>")
    assert caught.value.content_type == "text/html"


@each_target(SIMULATED)
async def test_a_dropped_connection_is_unreachable(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.drop_connections(1)
    with pytest.raises(TargetUnreachable):
        async with setup.target.open("chat", chat_body(setup.model)):
            pytest.fail("a dropped connection has no response")
    async with setup.target.open("chat", chat_body(setup.model)) as response:
        assert response.status == 200


@each_target(SIMULATED)
async def test_a_target_that_is_down_is_unreachable_for_every_call(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.down()
    with pytest.raises(TargetUnreachable):
        await setup.target.tags()
    with pytest.raises(TargetUnreachable):
        async with setup.target.relay("POST", "/api/show", b'{"model":"gemma3:1b"}'):
            pass
    setup.sim.up()
    assert (await setup.target.tags())["models"]


@each_target(SIMULATED)
async def test_an_error_line_inside_a_stream_is_relayed_as_ollama_wrote_it(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.fail_mid_stream(after_chunks=2, error="model runner has unexpectedly stopped")
    async with setup.target.open("chat", chat_body(setup.model)) as response:
        raw = b"".join([chunk async for chunk in response.chunks()])
    lines = ndjson(raw)
    assert len(lines) == 3
    assert lines[-1] == {"error": "model runner has unexpectedly stopped"}


@each_target(["socket"])
async def test_a_connection_cut_mid_stream_breaks_the_stream(setup: Setup) -> None:
    assert setup.sim is not None
    setup.sim.fail_mid_stream(after_chunks=1)
    received: list[bytes] = []
    async with setup.target.open("chat", chat_body(setup.model)) as response:
        with pytest.raises(TargetBrokeStream):
            async for chunk in response.chunks():
                received.append(chunk)
    assert ndjson(b"".join(received))[0]["done"] is False


async def test_a_stopped_server_is_unreachable() -> None:
    async with serve_simulator(SimulatedOllama()) as running:
        stopped_url = running.url
    async with AiohttpTransport() as transport:
        with pytest.raises(TargetUnreachable):
            await OllamaTarget(transport, stopped_url).version()


@each_target(["socket"])  # httpx.ASGITransport hands over the body in one piece
async def test_each_line_ollama_writes_is_one_chunk_even_when_sent_back_to_back(
    setup: Setup,
) -> None:
    assert setup.sim is not None
    setup.sim.token_delay = 0.0
    async with setup.target.open("chat", chat_body(setup.model)) as response:
        chunks = [chunk async for chunk in response.chunks()]
    assert len(chunks) == 7  # six tokens and the done line
    assert all(chunk.count(b"\n") == 1 and chunk.endswith(b"\n") for chunk in chunks)


@each_target(["socket"])
async def test_chunks_arrive_as_sent_and_leaving_early_aborts_the_generation(
    setup: Setup,
) -> None:
    sim = setup.sim
    assert sim is not None
    sim.token_delay = 60.0  # the second token would take a minute: the first must not wait for it
    with anyio.fail_after(10):
        async with setup.target.open("chat", chat_body(setup.model)) as response:
            async for chunk in response.chunks():
                first = json.loads(chunk)
                break
        await sim.wait_for(lambda: sim.aborted == 1)
    assert first["message"]["content"] == sim.reply(setup.model, "Say hello.").split(" ")[0]
    assert [g.outcome for g in sim.generations] == ["aborted"]


@each_target(SIMULATED)
async def test_warm_keeps_an_embedding_model_loaded_for_good(setup: Setup) -> None:
    await setup.target.warm("all-minilm")
    loaded = (await setup.target.ps())["models"]
    assert [m["name"] for m in loaded] == ["all-minilm:latest"]
    assert loaded[0]["expires_at"] > "2200"


# -- what the target sees ---------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class RecordingApp:
    """Passes requests to the simulator, keeping the headers each one arrived with."""

    def __init__(self, app: SimulatedOllama) -> None:
        self.app = app
        self.seen: list[Seen] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope.get("headers", [])}
        self.seen.append(Seen(scope["method"], scope["path"], headers))
        await self.app(scope, receive, send)


@asynccontextmanager
async def recorded_target(
    transport_kind: str, recorder: RecordingApp, token: str | None = None, userinfo: str = ""
) -> AsyncIterator[OllamaTarget]:
    """A target whose requests reach `recorder`: in-process, or on a socket over foreman's
    transport; `userinfo` (`user:password`) goes into its URL."""
    at = f"{userinfo}@" if userinfo else ""
    if transport_kind == "asgi":
        async with httpx.ASGITransport(app=recorder) as transport:
            yield OllamaTarget(transport, f"http://{at}ollama.internal:11434", token=token)
        return
    async with (
        serve_simulator(recorder) as running,  # type: ignore[arg-type]
        AiohttpTransport() as transport,
    ):
        yield OllamaTarget(transport, running.url.replace("://", f"://{at}"), token=token)


def host_of(url: str) -> str:
    return httpx.URL(url).netloc.decode()


@pytest.mark.parametrize("transport_kind", SIMULATED)
async def test_requests_carry_the_targets_host_and_the_token(transport_kind: str) -> None:
    recorder = RecordingApp(SimulatedOllama())
    async with recorded_target(transport_kind, recorder, token="target-token") as target:
        async with target.open("chat", chat_body(CHAT_MODEL)) as response:
            assert response.status == 200
        await target.tags()
        expected_host = host_of(target.base_url)
    chat, tags = recorder.seen
    for seen in (chat, tags):
        assert seen.headers["host"] == expected_host
        assert seen.headers["authorization"] == "Bearer target-token"
        assert seen.headers["accept-encoding"] == "identity"
        assert seen.headers["user-agent"] == "foreman"
        assert "cookie" not in seen.headers
    assert chat.headers["content-type"] == "application/json"
    assert "content-type" not in tags.headers


@pytest.mark.parametrize("transport_kind", SIMULATED)
async def test_without_a_token_no_authorization_is_sent(transport_kind: str) -> None:
    recorder = RecordingApp(SimulatedOllama())
    async with recorded_target(transport_kind, recorder) as target:
        await target.version()
        expected_host = host_of(target.base_url)
    assert "authorization" not in recorder.seen[0].headers
    assert recorder.seen[0].headers["host"] == expected_host


@pytest.mark.parametrize("transport_kind", SIMULATED)
@pytest.mark.parametrize(
    ("token", "expected"),
    [(None, "Basic " + base64.b64encode(b"alice:s3 cret").decode()), ("tok", "Bearer tok")],
)
async def test_credentials_in_the_url_become_basic_auth_unless_a_token_is_set(
    transport_kind: str, token: str | None, expected: str
) -> None:
    recorder = RecordingApp(SimulatedOllama())
    async with recorded_target(transport_kind, recorder, token, "alice:s3%20cret") as target:
        assert (await target.version())["version"]
        async with target.open("chat", chat_body(CHAT_MODEL)) as response:
            assert response.status == 200
    for seen in recorder.seen:
        assert seen.headers["authorization"] == expected
        assert "alice" not in seen.headers["host"]


async def test_an_unknown_kind_is_a_programming_error() -> None:
    async with httpx.ASGITransport(app=SimulatedOllama()) as transport:
        with pytest.raises(ValueError, match="embed"):
            async with OllamaTarget(transport, "http://ollama").open("embed", b"{}"):
                pass


class TimeoutsSeen(httpx.ASGITransport):
    """Records the timeouts each request asks its transport for."""

    def __init__(self, app: Any) -> None:
        super().__init__(app=app)
        self.timeouts: list[dict[str, float | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(request.extensions["timeout"])
        return await super().handle_async_request(request)


async def test_connecting_is_bounded_and_reading_never_times_out() -> None:
    async with TimeoutsSeen(SimulatedOllama()) as transport:
        target = OllamaTarget(transport, "http://127.0.0.1:11434/")
        await target.version()
        async with target.open("chat", chat_body(CHAT_MODEL)) as response:
            assert response.status == 200
    for timeouts in transport.timeouts:
        assert (timeouts["connect"], timeouts["read"]) == (5.0, None)
