"""Ollama routes that never wait in the queue: relayed to the target or served from the inventory.

Relayed responses keep the target's status, content type and bytes. Streams (pull, push, create)
are passed on chunk by chunk as they arrive. Routes that change what the target has installed
refresh the inventory once their response is complete, before the client sees its end, so a
client that pulls and then lists sees the new model.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.response import Stream

from foreman_adapters.inventory import PollingModelInventory
from foreman_adapters.ollama import OllamaTarget
from foreman_app.errors import JSON
from foreman_app.requests import InvalidRequest, json_object
from foreman_core.errors import TargetError

NDJSON = "application/x-ndjson"

logger = logging.getLogger("foreman.proxy")

Request_ = Request[Any, Any, Any]
AfterRelay = Callable[[], Awaitable[None]]


@get("/api/version")
async def version(target: NamedDependency[OllamaTarget]) -> Response[Any]:
    """The target's version object."""
    return await relay(target, "GET", "/api/version", None)


@get("/api/tags")
async def tags(inventory: NamedDependency[PollingModelInventory]) -> Response[bytes]:
    """Installed models, from the inventory cache."""
    return _model_list(inventory.tags())


@get("/api/ps")
async def ps(inventory: NamedDependency[PollingModelInventory]) -> Response[bytes]:
    """Loaded models, from the inventory cache."""
    return _model_list(inventory.ps())


@post("/api/show", status_code=200)
async def show(request: Request_, target: NamedDependency[OllamaTarget]) -> Response[Any]:
    """A model's details, from the target."""
    return await relay(target, "POST", "/api/show", await _body_naming_model(request))


@post("/api/embed", status_code=200)
async def embed(request: Request_, target: NamedDependency[OllamaTarget]) -> Response[Any]:
    """Embeddings, straight from the target: they never wait for the queue."""
    return await relay(target, "POST", "/api/embed", await _body_naming_model(request))


@post("/api/embeddings", status_code=200)
async def embeddings(request: Request_, target: NamedDependency[OllamaTarget]) -> Response[Any]:
    """The legacy single embedding, straight from the target."""
    return await relay(target, "POST", "/api/embeddings", await _body_naming_model(request))


STREAMED_MODEL_ROUTES = ("/api/pull", "/api/push", "/api/create")


@post(list(STREAMED_MODEL_ROUTES), status_code=200)
async def manage_model(
    request: Request_,
    target: NamedDependency[OllamaTarget],
    inventory: NamedDependency[PollingModelInventory],
) -> Response[Any]:
    """Pull, push or create a model on the target (streamed progress), then refresh."""
    body = await _body_naming_model(request)
    return await relay(target, "POST", request.url.path, body, after=_refresher(inventory))


@post("/api/copy", status_code=200)
async def copy(
    request: Request_,
    target: NamedDependency[OllamaTarget],
    inventory: NamedDependency[PollingModelInventory],
) -> Response[Any]:
    """Copy a model on the target."""
    body = await request.body()
    json_object(body)
    return await relay(target, "POST", "/api/copy", body, after=_refresher(inventory))


@delete("/api/delete", status_code=200)
async def delete_model(
    request: Request_,
    target: NamedDependency[OllamaTarget],
    inventory: NamedDependency[PollingModelInventory],
) -> Response[Any]:
    """Delete a model on the target."""
    body = await _body_naming_model(request)
    return await relay(target, "DELETE", "/api/delete", body, after=_refresher(inventory))


PROXY_ROUTES = [
    version,
    tags,
    ps,
    show,
    embed,
    embeddings,
    manage_model,
    copy,
    delete_model,
]
"""Every route of this module, for `create_app`."""


async def relay(
    target: OllamaTarget,
    method: str,
    path: str,
    body: bytes | None,
    *,
    after: AfterRelay | None = None,
) -> Response[Any]:
    """Send the request to the target and answer with its response, streamed when it streams.

    Raises `TargetUnreachable` (→ 502) when the target gives no response at all.
    """
    stack = AsyncExitStack()
    response = await stack.enter_async_context(target.relay(method, path, body))
    content_type = response.content_type or ""
    if content_type.split(";")[0].strip() == NDJSON:
        return Stream(
            _stream_then_close(response.chunks(), stack, after),
            status_code=response.status,
            headers={"content-type": content_type},
        )
    async with stack:
        data = b"".join([chunk async for chunk in response.chunks()])
    if after is not None:
        await after()
    return relayed(response.status, content_type, data)


def relayed(status: int, content_type: str, data: bytes) -> Response[bytes]:
    """A response carrying the target's status, content type and bytes unchanged."""
    headers = {"content-type": content_type} if content_type else {}
    return Response(data, status_code=status, headers=headers)


async def _stream_then_close(
    chunks: AsyncIterator[bytes], stack: AsyncExitStack, after: AfterRelay | None
) -> AsyncIterator[bytes]:
    async with stack:
        try:
            async for chunk in chunks:
                yield chunk
        except TargetError as exc:
            # Ollama ends a stream that fails midway with one error line.
            yield msgspec.json.encode({"error": str(exc) or "the Ollama target failed"}) + b"\n"
    if after is not None:
        await after()


def _model_list(listing: dict[str, Any]) -> Response[bytes]:
    """Ollama's `{"models": [...]}`, `models` never null."""
    models = listing.get("models") or []
    return Response(msgspec.json.encode({**listing, "models": models}), media_type=JSON)


async def _body_naming_model(request: Request_) -> bytes:
    """The raw body, once it is known to be a JSON object that names a model."""
    body = await request.body()
    fields = json_object(body)
    model = fields.get("model") or fields.get("name")
    if model is None or model == "":
        raise InvalidRequest("model is required")
    if not isinstance(model, str):
        raise InvalidRequest("model must be a string")
    return body


def _refresher(inventory: PollingModelInventory) -> AfterRelay:
    async def refresh() -> None:
        try:
            await inventory.refresh()
        except Exception:
            logger.warning("inventory refresh after a model change failed", exc_info=True)

    return refresh
