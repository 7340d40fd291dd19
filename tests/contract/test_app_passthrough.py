"""The app against the simulated Ollama, over ASGI: every route that does not wait in the queue,
auth, limits, the error shape, how the queued routes refuse requests, and the configuration the
app is built from."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from _proxy import running_proxy
from _tls import make_pki
from cryptography.hazmat.primitives import serialization
from dependency_injector import providers
from litestar import get

from foreman_adapters.aiohttp_transport import AiohttpTransport
from foreman_adapters.simulator import SimulatedOllama, serve_simulator
from foreman_app.app import create_app
from foreman_app.config import ConfigError, Settings, parse_duration, parse_size
from foreman_app.container import Container, build_container, reach_ollama_through
from foreman_app.sync_jobs import SyncJobs

pytestmark = pytest.mark.anyio

JSON_UTF8 = "application/json; charset=utf-8"
Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class HeaderRecorder:
    """An ASGI wrapper around the simulator that remembers the headers of each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers: dict[str, list[dict[str, str]]] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.headers.setdefault(scope["path"], []).append(headers)
        await self.app(scope, receive, send)


class BodyRecorder:
    """An ASGI wrapper around the simulator that remembers the body of each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: dict[str, list[bytes]] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        self.bodies.setdefault(scope["path"], []).append(body)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class EmbedGate:
    """Holds /api/embed requests at the target until `expected` of them are there at once.

    If foreman sent embeddings one at a time, the gate would never open.
    """

    def __init__(self, app: ASGIApp, expected: int) -> None:
        self.app = app
        self.expected = expected
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/embed":
            self.arrived += 1
            if self.arrived >= self.expected:
                self.all_in.set()
            await self.all_in.wait()
        await self.app(scope, receive, send)


@pytest.fixture
def sim() -> SimulatedOllama:
    return SimulatedOllama()


@pytest.fixture
def make_app(sim: SimulatedOllama, tmp_path: Path) -> Callable[..., Any]:
    """`async with make_app(env, target=asgi_app) as (client, container)`: a started app."""

    @asynccontextmanager
    async def started(
        env: dict[str, str] | None = None, target: ASGIApp | None = None, extra_routes: Any = None
    ) -> AsyncIterator[tuple[httpx.AsyncClient, Container]]:
        settings = Settings.from_env(
            {"FOREMAN_DB_PATH": str(tmp_path / "foreman.db"), **(env or {})}
        )
        container = build_container(settings)
        reach_ollama_through(container, httpx.ASGITransport(app=target or sim))
        app = create_app(container, extra_routes=extra_routes)
        # httpx over ASGI, in this test's loop: Litestar's httpx.AsyncClient runs the app in a
        # portal thread and handles one request at a time.
        async with (
            app.lifespan(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://foreman"
            ) as client,
        ):
            yield client, container

    return started


@pytest.fixture
async def client(make_app: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_app() as (test_client, _):
        yield test_client


def error_of(response: httpx.Response) -> str:
    """The `error` of a foreman error response, checking its shape on the way."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    return body["error"]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def model_names(listing: dict[str, Any]) -> list[str]:
    return [model["name"] for model in listing["models"]]


# -- routes served by foreman itself ------------------------------------------------------------


async def test_banner_answers_get_and_head_like_ollama(client: httpx.AsyncClient) -> None:
    got = await client.get("/")
    assert (got.status_code, got.text) == (200, "Ollama is running")
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    head = await client.head("/")
    assert (head.status_code, head.content) == (200, b"")


async def test_healthz_reports_ok_and_not_degraded(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["degraded"] is False


async def test_tags_and_ps_come_from_the_inventory_with_models_never_null(
    client: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    tags = await client.get("/api/tags")
    assert tags.status_code == 200
    assert tags.headers["content-type"] == JSON_UTF8
    assert "llama3.2:latest" in model_names(tags.json())
    assert tags.json() == json.loads((await _direct(sim, "GET", "/api/tags")).content)
    ps = await client.get("/api/ps")
    assert ps.status_code == 200
    assert ps.json() == {"models": []}


async def test_version_is_the_targets(client: httpx.AsyncClient, sim: SimulatedOllama) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    assert response.json() == {"version": sim.version}


# -- relayed routes -----------------------------------------------------------------------------


async def test_show_relays_the_targets_answer(
    client: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    body = b'{"model":"llama3.2"}'
    response = await client.post("/api/show", content=body)
    direct = await _direct(sim, "POST", "/api/show", body)
    assert response.status_code == 200
    assert response.headers["content-type"] == direct.headers["content-type"]
    assert response.content == direct.content
    assert "model_info" in response.json()


async def test_unknown_model_on_show_and_embed_is_the_targets_404(
    client: httpx.AsyncClient,
) -> None:
    show = await client.post("/api/show", content=b'{"model":"nope"}')
    assert (show.status_code, error_of(show)) == (404, "model 'nope' not found")
    embed = await client.post("/api/embed", content=b'{"model":"nope","input":"x"}')
    assert embed.status_code == 404
    assert error_of(embed) == 'model "nope" not found, try pulling it first'


async def test_embed_and_embeddings_relay_vectors_unchanged(
    client: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    body = b'{"model":"all-minilm","input":["a","b"]}'
    response = await client.post("/api/embed", content=body)
    direct = await _direct(sim, "POST", "/api/embed", body)
    assert response.status_code == 200
    assert response.json()["model"] == "all-minilm"
    assert response.json()["embeddings"] == direct.json()["embeddings"]
    legacy = await client.post("/api/embeddings", content=b'{"model":"all-minilm","prompt":"a"}')
    assert legacy.status_code == 200
    assert legacy.json()["embedding"] == direct.json()["embeddings"][0]


async def test_a_form_content_type_is_still_read_as_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/embed",
        content=b'{"model":"all-minilm","input":"hello"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert len(response.json()["embeddings"]) == 1


async def test_embeddings_reach_the_target_concurrently(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    gate = EmbedGate(sim, expected=4)
    async with make_app(target=gate) as (client, _):
        requests = [
            client.post("/api/embed", content=f'{{"model":"all-minilm","input":"t{i}"}}'.encode())
            for i in range(4)
        ]
        async with asyncio.timeout(10):
            responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 4
    assert gate.arrived == 4


async def test_pull_streams_progress_and_the_new_model_is_listed_at_once(
    client: httpx.AsyncClient,
) -> None:
    assert "phi3:latest" not in model_names((await client.get("/api/tags")).json())
    response = await client.post("/api/pull", content=b'{"model":"phi3"}')
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    assert all(line.strip() for line in lines)
    assert json.loads(lines[-1]) == {"status": "success"}
    assert "phi3:latest" in model_names((await client.get("/api/tags")).json())


async def test_create_copy_and_delete_change_the_listing(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/create", content=b'{"model":"mine","from":"llama3.2","stream":false}'
    )
    assert created.status_code == 200
    assert created.json() == {"status": "success"}
    copied = await client.post("/api/copy", content=b'{"source":"mine","destination":"yours"}')
    assert (copied.status_code, copied.content) == (200, b"")
    names = model_names((await client.get("/api/tags")).json())
    assert {"mine:latest", "yours:latest"} <= set(names)
    deleted = await client.request("DELETE", "/api/delete", content=b'{"model":"mine"}')
    assert deleted.status_code == 200
    names = model_names((await client.get("/api/tags")).json())
    assert "mine:latest" not in names
    assert "yours:latest" in names


async def test_push_streams_the_targets_progress(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/push", content=b'{"model":"llama3.2"}')
    assert response.status_code == 200
    assert json.loads(response.text.splitlines()[-1]) == {"status": "success"}


# -- bad requests and the error shape -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{}", "model is required"),
        (b'{"model":""}', "model is required"),
        (b'{"model":3}', "model must be a string"),
        (b"[1]", "request body must be a JSON object"),
    ],
)
async def test_bad_bodies_are_400_with_a_clear_message(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    response = await client.post("/api/show", content=body)
    assert (response.status_code, error_of(response)) == (400, message)


async def test_malformed_json_is_400(client: httpx.AsyncClient, sim: SimulatedOllama) -> None:
    response = await client.post("/api/embed", content=b'{"model": x}')
    assert response.status_code == 400
    assert "invalid" in error_of(response).lower()
    assert sim.requests["/api/embed"] == 0


async def test_unknown_route_and_wrong_method_are_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing-here")
    assert (missing.status_code, error_of(missing)) == (404, "not found")
    wrong = await client.put("/api/tags")
    assert (wrong.status_code, error_of(wrong)) == (405, "method not allowed")


async def test_a_body_over_the_limit_is_413_json(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    async with make_app({"FOREMAN_MAX_BODY_SIZE": "1KiB"}) as (client, _):
        small = await client.post("/api/embed", content=b'{"model":"all-minilm","input":"hi"}')
        big = await client.post(
            "/api/embed", content=b'{"model":"all-minilm","input":"' + b"x" * 2048 + b'"}'
        )
    assert small.status_code == 200
    assert big.status_code == 413
    assert error_of(big) == "request body too large"
    assert sim.requests["/api/embed"] == 1


async def test_an_unexpected_exception_is_a_logged_500_json(
    make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    async with make_app(extra_routes=[boom]) as (client, _):
        response = await client.get("/boom")
    assert (response.status_code, error_of(response)) == (500, "internal error")
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and r.levelname == "ERROR"]
    assert any(isinstance(exc, RuntimeError) and str(exc) == "kaboom" for exc in logged)


# -- the target going away ----------------------------------------------------------------------


async def test_target_down_degrades_health_but_the_listing_is_still_served(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    async with make_app() as (client, container):
        sim.down()
        await container.inventory().refresh()
        health = (await client.get("/healthz")).json()
        tags = await client.get("/api/tags")
        version = await client.get("/api/version")
        sim.up()
        await container.inventory().refresh()
        recovered = (await client.get("/healthz")).json()
    assert health["degraded"] is True
    assert tags.status_code == 200
    assert "llama3.2:latest" in model_names(tags.json())
    assert version.status_code == 502
    assert error_of(version)
    assert recovered["degraded"] is False


async def test_an_unreachable_target_at_start_up_still_serves_degraded(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    sim.down()
    async with make_app() as (client, _):
        health = await client.get("/healthz")
        tags = await client.get("/api/tags")
    assert health.status_code == 200
    assert health.json()["degraded"] is True
    assert tags.json() == {"models": []}


async def test_the_inventory_polls_on_connections_of_its_own(
    sim: SimulatedOllama, tmp_path: Path
) -> None:
    # The only connection for requests is taken by a generation Ollama holds: the inventory's
    # poll must not queue behind it and read the busy Ollama as unreachable.
    sim.hold()
    async with serve_simulator(sim) as running:
        env = {"FOREMAN_DB_PATH": str(tmp_path / "foreman.db"), "FOREMAN_OLLAMA_URL": running.url}
        container = build_container(Settings.from_env(env))
        container.ollama_transport.override(providers.Object(AiohttpTransport(max_connections=1)))
        body = {"model": "llama3.2", "messages": [], "stream": False}
        held = asyncio.ensure_future(container.target().post_json("/api/chat", body))
        try:
            await sim.wait_for_held(1)
            inventory = container.inventory()
            await inventory.refresh()
            assert not inventory.degraded
            assert inventory.tags()["models"]
        finally:
            sim.release()
            await held
            await container.ollama_transport().aclose()
            await container.inventory_transport().aclose()


async def test_ollama_is_reached_directly_whatever_http_proxy_says(
    sim: SimulatedOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proxy variables are for webhook deliveries only (ADR 0017).
    async with running_proxy() as proxy, serve_simulator(sim) as running:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        env = {"FOREMAN_DB_PATH": str(tmp_path / "foreman.db"), "FOREMAN_OLLAMA_URL": running.url}
        container = build_container(Settings.from_env(env))
        try:
            assert "version" in await container.target().version()
            await container.inventory().refresh()
            assert not container.inventory().degraded
        finally:
            await container.ollama_transport().aclose()
            await container.inventory_transport().aclose()
    assert proxy.heads == []


async def test_an_ollama_behind_mutual_tls_is_reached_with_the_configured_files(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    seen: list[bytes] = []

    async def https_ollama(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        body = b'{"version":"0.9.0"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(https_ollama, "127.0.0.1", 0, ssl=pki.server)
    port = server.sockets[0].getsockname()[1]
    env = {
        "FOREMAN_DB_PATH": str(tmp_path / "foreman.db"),
        "FOREMAN_OLLAMA_URL": f"https://127.0.0.1:{port}",
        "FOREMAN_OLLAMA_CA_FILE": pki.ca_file,
        "FOREMAN_OLLAMA_CLIENT_CERT": pki.client_cert,
        "FOREMAN_OLLAMA_CLIENT_KEY": pki.client_key,
    }
    container = build_container(Settings.from_env(env))
    try:
        assert await container.target().version() == {"version": "0.9.0"}
    finally:
        await container.ollama_transport().aclose()
        server.close()
    assert seen[0].startswith(b"GET /api/version HTTP/1.1\r\n")


# -- start-up -----------------------------------------------------------------------------------


async def test_the_embed_model_is_warmed_for_good_at_start_up(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    async with make_app({"FOREMAN_EMBED_MODEL": "all-minilm"}):
        await sim.wait_for(lambda: sim.gpu.embed_loads >= 1)
        loaded = (await _direct(sim, "GET", "/api/ps")).json()["models"]
    minilm = [entry for entry in loaded if entry["name"] == "all-minilm:latest"]
    assert len(minilm) == 1
    # keep_alive -1 means forever: Ollama reports an expiry centuries away
    assert int(minilm[0]["expires_at"][:4]) > 2100


async def test_a_failed_warm_up_is_not_fatal(
    make_app: Callable[..., Any], sim: SimulatedOllama, caplog: pytest.LogCaptureFixture
) -> None:
    def warning_logged() -> bool:
        return any("no-such-model" in record.getMessage() for record in caplog.records)

    async with make_app({"FOREMAN_EMBED_MODEL": "no-such-model"}) as (client, _):
        await eventually(warning_logged)
        health = await client.get("/healthz")
        tags = await client.get("/api/tags")
    assert health.status_code == 200
    assert tags.status_code == 200
    assert sim.requests["/api/embed"] == 1


# -- auth ---------------------------------------------------------------------------------------

TOKENS = {"FOREMAN_AUTH_TOKEN": "first-token, second-token"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic first-token"}],
    ids=["none", "wrong", "not-bearer"],
)
async def test_without_a_valid_token_every_route_is_401(
    make_app: Callable[..., Any], headers: dict[str, str]
) -> None:
    async with make_app(TOKENS) as (client, _):
        for method, path in [
            ("GET", "/api/tags"),
            ("POST", "/api/show"),
            ("GET", "/api/nothing-here"),
            ("PUT", "/api/tags"),
            ("GET", "/schema"),
        ]:
            response = await client.request(method, path, headers=headers, content=b"{}")
            assert (response.status_code, error_of(response)) == (401, "unauthorized"), path


async def test_each_configured_token_is_accepted(make_app: Callable[..., Any]) -> None:
    async with make_app(TOKENS) as (client, _):
        for token in ("first-token", "second-token"):
            response = await client.get("/api/tags", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200


async def test_health_and_banner_need_no_token(make_app: Callable[..., Any]) -> None:
    async with make_app(TOKENS) as (client, _):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/")).status_code == 200
        assert (await client.head("/")).status_code == 200


async def test_the_clients_token_is_never_forwarded_only_foremans_own(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    recorder = HeaderRecorder(sim)
    env = {**TOKENS, "FOREMAN_OLLAMA_TOKEN": "target-token"}
    async with make_app(env, target=recorder) as (client, _):
        response = await client.post(
            "/api/show",
            content=b'{"model":"llama3.2"}',
            headers={"Authorization": "Bearer first-token"},
        )
    assert response.status_code == 200
    assert [h.get("authorization") for h in recorder.headers["/api/show"]] == [
        "Bearer target-token"
    ]
    every_request = [h for requests in recorder.headers.values() for h in requests]
    assert {h.get("authorization") for h in every_request} == {"Bearer target-token"}


async def test_without_a_target_token_no_authorization_reaches_the_target(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    recorder = HeaderRecorder(sim)
    async with make_app(TOKENS, target=recorder) as (client, _):
        response = await client.post(
            "/api/embed",
            content=b'{"model":"all-minilm","input":"x"}',
            headers={"Authorization": "Bearer second-token"},
        )
    assert response.status_code == 200
    assert "authorization" not in recorder.headers["/api/embed"][0]


async def _direct(
    sim: SimulatedOllama, method: str, path: str, body: bytes | None = None
) -> httpx.Response:
    """The simulator's own answer, for comparison with what foreman relays."""
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as direct:
        return await direct.request(method, path, content=body)


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("24h", timedelta(hours=24)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("2m0.5s", timedelta(minutes=2, milliseconds=500)),
        ("30", timedelta(seconds=30)),
        ("0.25", timedelta(milliseconds=250)),
        ("1500us", timedelta(microseconds=1500)),
    ],
)
def test_durations_parse_go_style_and_bare_seconds(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["abc", "5x", "1h 30m", "-5s", "h", "1.2.3s", "5 m", "1d"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("32MiB", 32 * 1024**2),
        ("1GB", 10**9),
        ("2kb", 2000),
        ("1 GiB", 1024**3),
    ],
)
def test_sizes_accept_bytes_and_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert settings.listen_addr == "127.0.0.1:8080"
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert settings.db_path == "./foreman.db"
    assert settings.poll_interval == timedelta(seconds=30)
    assert settings.max_attempts == 3
    assert settings.job_ttl == timedelta(hours=24)
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.max_queue == 1000
    assert settings.max_wait == timedelta(minutes=10)
    assert settings.log_level == "info"
    assert settings.max_body_size == 32 * 1024**2
    assert settings.shutdown_grace == timedelta(seconds=30)
    assert settings.auth_tokens == ()
    assert (settings.ollama_token, settings.webhook_secret, settings.embed_model) == (None,) * 3
    assert settings.webhook_allowed_hosts is None


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "FOREMAN_LISTEN_ADDR": "0.0.0.0:9000",
            "FOREMAN_OLLAMA_URL": "https://gpu.example:11434/",
            "FOREMAN_AUTH_TOKEN": " a ,, b ,",
            "FOREMAN_POLL_INTERVAL": "500ms",
            "FOREMAN_MAX_ATTEMPTS": "5",
            "FOREMAN_LOG_LEVEL": "DEBUG",
            "FOREMAN_MAX_BODY_SIZE": "512KiB",
            "FOREMAN_WEBHOOK_ALLOWED_HOSTS": "hooks.example, 10.0.0.0/8",
            "FOREMAN_EMBED_MODEL": "all-minilm",
            "FOREMAN_OLLAMA_TOKEN": "",
        }
    )
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9000)
    assert settings.public_url == "http://0.0.0.0:9000"
    assert settings.ollama_url == "https://gpu.example:11434"
    assert settings.auth_tokens == ("a", "b")
    assert settings.poll_interval == timedelta(milliseconds=500)
    assert settings.max_attempts == 5
    assert settings.log_level == "debug"
    assert settings.max_body_size == 512 * 1024
    assert settings.webhook_allowed_hosts == ("hooks.example", "10.0.0.0/8")
    assert settings.embed_model == "all-minilm"
    assert settings.ollama_token is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FOREMAN_LISTEN_ADDR", "localhost"),
        ("FOREMAN_LISTEN_ADDR", "127.0.0.1:70000"),
        ("FOREMAN_LISTEN_ADDR", ":8080"),
        ("FOREMAN_OLLAMA_URL", "ftp://host"),
        ("FOREMAN_OLLAMA_URL", "http://"),
        ("FOREMAN_OLLAMA_URL", "http://host:port"),
        ("FOREMAN_POLL_INTERVAL", "abc"),
        ("FOREMAN_POLL_INTERVAL", "0s"),
        ("FOREMAN_MAX_ATTEMPTS", "0"),
        ("FOREMAN_MAX_ATTEMPTS", "three"),
        ("FOREMAN_JOB_TTL", "forever"),
        ("FOREMAN_PUBLIC_URL", "foreman.example"),
        ("FOREMAN_MAX_QUEUE", "-1"),
        ("FOREMAN_MAX_WAIT", "10 minutes"),
        ("FOREMAN_LOG_LEVEL", "loud"),
        ("FOREMAN_MAX_BODY_SIZE", "32 potatoes"),
        ("FOREMAN_MAX_BODY_SIZE", "0"),
        ("FOREMAN_WEBHOOK_ALLOWED_HOSTS", " , "),
        ("FOREMAN_SHUTDOWN_GRACE", "soon"),
    ],
)
def test_an_invalid_value_is_a_config_error_naming_variable_and_value(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert repr(value) in message
    assert "\n" not in message


def test_the_ollama_tls_files_are_read(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    settings = Settings.from_env(
        {
            "FOREMAN_OLLAMA_CA_FILE": pki.ca_file,
            "FOREMAN_OLLAMA_CLIENT_CERT": pki.client_cert,
            "FOREMAN_OLLAMA_CLIENT_KEY": pki.client_key,
        }
    )
    assert (settings.ollama_ca_file, settings.ollama_client_cert, settings.ollama_client_key) == (
        pki.ca_file,
        pki.client_cert,
        pki.client_key,
    )
    both = Settings.from_env({"FOREMAN_OLLAMA_CLIENT_CERT": pki.client_cert_and_key})
    assert (both.ollama_client_cert, both.ollama_client_key) == (pki.client_cert_and_key, None)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"FOREMAN_OLLAMA_CA_FILE": "missing.pem"}, "FOREMAN_OLLAMA_CA_FILE"),
        ({"FOREMAN_OLLAMA_CA_FILE": "empty.pem"}, "FOREMAN_OLLAMA_CA_FILE"),
        ({"FOREMAN_OLLAMA_CA_FILE": "key.pem"}, "FOREMAN_OLLAMA_CA_FILE"),
        ({"FOREMAN_OLLAMA_CLIENT_CERT": "cert.pem"}, "FOREMAN_OLLAMA_CLIENT_CERT"),
        ({"FOREMAN_OLLAMA_CLIENT_CERT": "missing.pem"}, "FOREMAN_OLLAMA_CLIENT_CERT"),
        (
            {"FOREMAN_OLLAMA_CLIENT_CERT": "cert.pem", "FOREMAN_OLLAMA_CLIENT_KEY": "ca.pem"},
            "FOREMAN_OLLAMA_CLIENT_CERT",
        ),
        ({"FOREMAN_OLLAMA_CLIENT_KEY": "key.pem"}, "FOREMAN_OLLAMA_CLIENT_KEY"),
        (
            {"FOREMAN_OLLAMA_CLIENT_CERT": "cert.pem", "FOREMAN_OLLAMA_CLIENT_KEY": "locked.pem"},
            "FOREMAN_OLLAMA_CLIENT_CERT",
        ),
    ],
    ids=[
        "missing_ca",
        "empty_ca",
        "key_as_ca",
        "cert_without_key",
        "missing_cert",
        "wrong_key",
        "key_without_cert",
        "encrypted_key",
    ],
)
def test_an_unusable_ollama_tls_file_is_a_config_error_naming_variable_and_file(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    make_pki(tmp_path)
    (tmp_path / "empty.pem").write_text("")
    key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    locked = serialization.BestAvailableEncryption(b"secret")
    (tmp_path / "locked.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)
    )
    in_place = {name: str(tmp_path / file) for name, file in variables.items()}
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(in_place)
    message = str(raised.value)
    assert message.startswith(f"{named}: ")
    assert repr(in_place[named]) in message
    assert "\n" not in message


def test_the_duration_error_gives_examples() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"FOREMAN_POLL_INTERVAL": "abc"})
    assert str(raised.value) == (
        "FOREMAN_POLL_INTERVAL: invalid duration 'abc' (examples: 500ms, 30s, 5m, 1h30m)"
    )


# -- how the queued routes refuse requests, and how they are described ------------------------

QUEUED_PATHS = ["/api/chat", "/api/generate"]
CHAT_BODY = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
GENERATE_BODY = b'{"model":"llama3.2","prompt":"hi","stream":false}'


@pytest.mark.parametrize("path", QUEUED_PATHS)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{}", "model is required"),
        (b'{"model":3}', "model must be a string"),
        (b'{"model":"llama3.2","stream":"yes"}', "stream must be a boolean"),
        (b"[1]", "request body must be a JSON object"),
    ],
)
async def test_queued_routes_refuse_bad_bodies_with_400(
    client: httpx.AsyncClient, sim: SimulatedOllama, path: str, body: bytes, message: str
) -> None:
    response = await client.post(path, content=body)
    assert (response.status_code, error_of(response)) == (400, message)
    assert sim.requests[path] == 0


@pytest.mark.parametrize("path", QUEUED_PATHS)
async def test_queued_routes_refuse_an_unknown_model_with_ollamas_404(
    client: httpx.AsyncClient, sim: SimulatedOllama, path: str
) -> None:
    response = await client.post(path, content=b'{"model":"no-such-model"}')
    assert (response.status_code, error_of(response)) == (404, "model 'no-such-model' not found")
    assert sim.requests[path] == 0


async def test_queued_routes_refuse_a_body_over_the_limit_with_413(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    long_prompt = b'{"model":"llama3.2","prompt":"' + b"x" * 2048 + b'","stream":false}'
    async with make_app({"FOREMAN_MAX_BODY_SIZE": "1KiB"}) as (client, _):
        announced = await client.post("/api/generate", content=long_prompt)
        unannounced = await client.post("/api/generate", content=_in_pieces(long_prompt))
        small = await client.post("/api/generate", content=GENERATE_BODY)
    for big in (announced, unannounced):
        assert (big.status_code, error_of(big)) == (413, "request body too large")
    assert small.status_code == 200
    assert sim.requests["/api/generate"] == 1


async def _in_pieces(body: bytes) -> AsyncIterator[bytes]:
    """`body` streamed without a Content-Length, 512 bytes at a time."""
    for start in range(0, len(body), 512):
        yield body[start : start + 512]


async def test_queued_routes_need_a_token_when_tokens_are_set(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    async with make_app(TOKENS) as (client, _):
        refused = await client.post("/api/generate", content=GENERATE_BODY)
        wrong = await client.post(
            "/api/generate", content=GENERATE_BODY, headers={"Authorization": "Bearer wrong"}
        )
        served = await client.post(
            "/api/generate",
            content=GENERATE_BODY,
            headers={"Authorization": "Bearer second-token"},
        )
    for response in (refused, wrong):
        assert (response.status_code, error_of(response)) == (401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert served.status_code == 200
    assert sim.requests["/api/generate"] == 1


async def test_queued_routes_answer_other_methods_405_and_a_trailing_slash_alike(
    client: httpx.AsyncClient,
) -> None:
    wrong = await client.get("/api/chat")
    assert (wrong.status_code, error_of(wrong)) == (405, "method not allowed")
    slashed = await client.post("/api/chat/", content=CHAT_BODY)
    assert slashed.status_code == 200, slashed.text
    assert slashed.json()["message"]["role"] == "assistant"
    assert slashed.headers["x-foreman-job-id"]


async def test_an_unexpected_exception_in_a_queued_route_is_a_logged_500_json(
    make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSyncJobs(SyncJobs):
        def __init__(self) -> None:
            """Nothing to wire: `admit` fails first."""

        async def admit(self, *args: Any) -> Any:
            raise RuntimeError("kaboom")

    async with make_app() as (client, container):
        container.sync_jobs.override(providers.Object(BrokenSyncJobs()))
        response = await client.post("/api/chat", content=CHAT_BODY)
    assert (response.status_code, error_of(response)) == (500, "internal error")
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and r.levelname == "ERROR"]
    assert any(isinstance(exc, RuntimeError) and str(exc) == "kaboom" for exc in logged)


@pytest.mark.parametrize(
    ("path", "own_fields"),
    [("/api/chat", {"messages", "tools"}), ("/api/generate", {"prompt", "suffix", "raw"})],
)
async def test_the_openapi_description_has_the_queued_routes_request_bodies(
    client: httpx.AsyncClient, path: str, own_fields: set[str]
) -> None:
    description = (await client.get("/schema/openapi.json")).json()
    body = description["paths"][path]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["model"]
    assert {"model", "stream", "options", "keep_alive", *own_fields} <= set(schema["properties"])
    assert schema["properties"]["model"] == {
        "type": "string",
        "minLength": 1,
        "description": "the model, e.g. llama3.2",
    }


async def test_the_chat_messages_are_described_field_by_field(client: httpx.AsyncClient) -> None:
    description = (await client.get("/schema/openapi.json")).json()
    chat = description["paths"]["/api/chat"]["post"]["requestBody"]["content"]["application/json"]
    listed, _null = chat["schema"]["properties"]["messages"]["anyOf"]
    assert {"role", "content", "images", "tool_calls"} <= set(listed["items"]["properties"])


async def test_fields_foreman_does_not_know_reach_the_target_byte_for_byte(
    make_app: Callable[..., Any], sim: SimulatedOllama
) -> None:
    recorder = BodyRecorder(sim)
    body = (
        b'{"model":"llama3.2", "stream":false,"messages":[{"role":"user","content":"hi"}],'
        b' "future_field": {"x": [1, 2.50]}}'
    )
    async with make_app(target=recorder) as (client, _):
        response = await client.post(
            "/api/chat",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200, response.text
    # The worker loads the model first (a chat with no messages), then sends the client's bytes.
    assert recorder.bodies["/api/chat"][-1] == body


@pytest.mark.parametrize("path", ["/api/chat", "/jobs"])
async def test_a_client_that_leaves_mid_body_stores_nothing_and_logs_no_error(
    sim: SimulatedOllama, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    container = build_container(Settings.from_env({"FOREMAN_DB_PATH": str(tmp_path / "f.db")}))
    reach_ollama_through(container, httpx.ASGITransport(app=sim))
    app = create_app(container)
    arriving: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"model": "llama3.2", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return arriving.pop(0) if arriving else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"foreman"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("foreman", 80),
    }
    async with app.lifespan():
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert container.store().list(limit=10).jobs == []
    assert sent[0]["status"] == 400
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
