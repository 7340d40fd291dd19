"""`DeferredAccessLog`: the access line of each request, logged a moment after the fact.

uvicorn logs a request's access line when the response starts, in the middle of sending it:
making the record, formatting it and writing it to stderr then delays the answer by ~0.1 ms
(ADR 0015). This ASGI wrapper logs the same line on the `foreman.access` logger a moment
(`ACCESS_LOG_DELAY` by default) after the response started, when the event loop is usually
waiting for Ollama; uvicorn's own (`uvicorn.access`, which uvicorn silences then) is off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

ACCESS_LOG_DELAY = 0.002
"""Seconds from a response's start to its access line. A client that sends its next request
the moment it has an answer would otherwise wait for the line to be written."""

access_logger = logging.getLogger("foreman.access")


class DeferredAccessLog:
    """Wraps an ASGI app; logs `client - "METHOD path HTTP/v" status` for each HTTP response."""

    def __init__(self, app: Any, delay: float = ACCESS_LOG_DELAY) -> None:
        self.app = app
        self.delay = delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_noting_the_start(message: Any) -> None:
            if message["type"] == "http.response.start":
                asyncio.get_running_loop().call_later(
                    self.delay, log_access, scope, message["status"]
                )
            await send(message)

        await self.app(scope, receive, send_noting_the_start)


def log_access(scope: Any, status: int) -> None:
    """The access line uvicorn would have logged for the request of `scope`."""
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d',
        get_client_addr(scope),
        scope["method"],
        get_path_with_query_string(scope),
        scope["http_version"],
        status,
    )
