"""The httpx transports that could carry foreman's requests to Ollama, by name, for
bench_transports.py (ADR 0017); and `python bench/_transports.py NAME`, which runs
`foreman serve` with its Ollama transport replaced by the one named.

- `aiohttp`: foreman's own `AiohttpTransport`, a thin translation over aiohttp's public API;
- `httpcore`: httpx's own `httpx.AsyncHTTPTransport`, HTTP/1.1 only, pool sized as foreman's;
- `httpx-aiohttp`: the published `httpx_aiohttp.AiohttpTransport` (when installed; it is not a
  dependency of foreman).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

import httpx

from foreman_adapters.aiohttp_transport import AiohttpTransport

MAX_CONNECTIONS = 100
KEEPALIVE_EXPIRY = 30.0


def _httpcore() -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    return httpx.AsyncHTTPTransport(http1=True, http2=False, limits=limits, trust_env=False)


def _httpx_aiohttp() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport as Published

    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY)
    return Published(limits=limits, trust_env=False)


def candidates() -> dict[str, Callable[[], httpx.AsyncBaseTransport]]:
    """Every transport that can be built here, by name."""
    found: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        "aiohttp": lambda: AiohttpTransport(
            max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY
        ),
        "httpcore": _httpcore,
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        found["httpx-aiohttp"] = _httpx_aiohttp
    return found


def serve_with(name: str) -> int:
    """`foreman serve`, configured from the environment, sending to Ollama over `name`."""
    from dependency_injector import providers

    from foreman_app.app import create_app
    from foreman_app.server import StartupFailed, configured_container, run_uvicorn

    try:
        container = configured_container(os.environ)
    except StartupFailed as failure:
        print(f"foreman: {failure}", file=sys.stderr)
        return failure.status
    container.ollama_transport.override(providers.Singleton(candidates()[name]))
    return run_uvicorn(create_app(container), container.settings())


if __name__ == "__main__":
    sys.exit(serve_with(sys.argv[1]))
