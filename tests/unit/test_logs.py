"""DeferredAccessLog: uvicorn's access line, on foreman.access, a moment after the response."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from foreman_app.logs import DeferredAccessLog

pytestmark = pytest.mark.anyio

SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/api/chat",
    "raw_path": b"/api/chat",  # uvicorn sets it on every request, and its log line reads it
    "query_string": b"x=1",
    "root_path": "",
    "http_version": "1.1",
    "client": ("127.0.0.1", 5000),
}


async def answer(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that answers 201 with a body."""
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_the_access_line_is_uvicorns_logged_after_the_response_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foreman.access")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        assert caplog.records == []  # not while the answer goes out

    await DeferredAccessLog(answer, delay=0)(SCOPE, None, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert caplog.records == []
    for _ in range(10):  # a timer due at once runs within a few turns of the loop
        if caplog.records:
            break
        await asyncio.sleep(0)
    [record] = caplog.records
    assert record.name == "foreman.access"
    assert record.getMessage() == '127.0.0.1:5000 - "POST /api/chat?x=1 HTTP/1.1" 201'


async def test_other_scopes_pass_through_unlogged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="foreman.access")
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await DeferredAccessLog(app)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]
    assert caplog.records == []
