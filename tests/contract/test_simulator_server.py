"""The simulator's socket server (`serve_simulator`, an ASGI bridge over aiohttp's web server):
what an ASGI app does with its connection reaches a real client, and the client's leaving
reaches the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from foreman_adapters.simulator import serve_simulator
from foreman_adapters.simulator.wire import CLOSE_EXTENSION, RESET_EXTENSION

pytestmark = pytest.mark.anyio


class ScriptedApp:
    """An ASGI app that answers each request by `behaviour` and keeps what it heard."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.body_messages: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.first_line_sent = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.body_messages.append(message)
            if not message.get("more_body", False):
                break
        extensions = scope["extensions"]
        if self.behaviour == "reset":
            extensions[RESET_EXTENSION]()
        elif self.behaviour in ("close", "stream_forever"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"one\n", "more_body": True})
            self.first_line_sent.set()
            if self.behaviour == "close":
                extensions[CLOSE_EXTENSION]()
        else:
            body = b"".join(m.get("body", b"") for m in self.body_messages)
            sized = [(b"content-length", str(len(body)).encode())]
            headers = [
                (b"content-type", b"text/plain"),
                *(sized if self.behaviour == "sized" else []),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ScriptedApp, str]]:
    app = ScriptedApp(request.param)
    async with serve_simulator(app) as running:  # type: ignore[arg-type]
        yield app, running.url


def behaving(name: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("served", [name], indirect=True)


@behaving("reset")
async def test_a_reset_reaches_the_client_as_a_broken_connection(
    served: tuple[ScriptedApp, str],
) -> None:
    app, url = served
    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.ReadError):  # ECONNRESET; a FIN would be RemoteProtocolError
            await http.post("/api/chat", content=b"{}")
    await app.disconnected.wait()  # and the app hears that the client has gone


@behaving("close")
async def test_a_close_mid_response_delivers_what_was_sent_then_breaks(
    served: tuple[ScriptedApp, str],
) -> None:
    app, url = served
    received: list[bytes] = []
    async with httpx.AsyncClient(base_url=url) as http, http.stream("GET", "/") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received.append(chunk)
    assert b"".join(received) == b"one\n"
    await app.disconnected.wait()


@behaving("stream_forever")
async def test_a_client_that_leaves_mid_response_is_an_http_disconnect(
    served: tuple[ScriptedApp, str],
) -> None:
    app, url = served
    async with httpx.AsyncClient(base_url=url) as http, http.stream("GET", "/") as response:
        assert response.status_code == 200
        await app.first_line_sent.wait()
    await app.disconnected.wait()


@behaving("sized")
async def test_a_body_streams_in_and_a_sized_answer_keeps_its_content_length(
    served: tuple[ScriptedApp, str],
) -> None:
    app, url = served

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"abc", b"def", b"ghi"):
            yield piece

    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/api/blobs/sha256:00", content=pieces())
    assert response.content == b"abcdefghi"
    assert response.headers["content-length"] == "9"
    assert "transfer-encoding" not in response.headers
    assert "server" not in response.headers
    assert app.body_messages[-1]["more_body"] is False
    assert all(m["type"] == "http.request" for m in app.body_messages)


@behaving("unsized")
async def test_an_answer_without_content_length_is_chunked(
    served: tuple[ScriptedApp, str],
) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/", params={"q": "1"})
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"] == "text/plain"
    assert response.content == b""
