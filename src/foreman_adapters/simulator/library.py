"""The simulator's routes other than chat and generate: listing, showing, managing and embedding."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.catalog import pulled_model
from foreman_adapters.simulator.text import count_tokens, embedding_vector
from foreman_adapters.simulator.wire import (
    JSON_PLAIN,
    TEXT_UTF8,
    BadRequest,
    Exchange,
    decode_request,
    parse_keep_alive,
)

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

_MANAGE_FIELDS: dict[str, type | tuple[type, ...]] = {"model": str, "name": str, "stream": bool}


async def root(sim: SimulatedOllama, ex: Exchange) -> None:
    """GET and HEAD /: the liveness text."""
    await ex.reply(200, b"Ollama is running", TEXT_UTF8)


async def version(sim: SimulatedOllama, ex: Exchange) -> None:
    """GET /api/version."""
    await ex.reply_json({"version": sim.version})


async def tags(sim: SimulatedOllama, ex: Exchange) -> None:
    """GET /api/tags: installed models, newest first; `models` is [] when there are none."""
    await ex.reply_json(sim.library.tags())


async def ps(sim: SimulatedOllama, ex: Exchange) -> None:
    """GET /api/ps: models in GPU memory."""
    await ex.reply_json({"models": sim.gpu.ps_entries()})


async def show(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/show."""
    request = decode_request(ex.body, "ShowRequest", _MANAGE_FIELDS)
    requested = request.get("model") or request.get("name") or ""
    if not requested:
        raise BadRequest(400, "model is required")
    model = sim.library.find(requested)
    if model is None:
        raise BadRequest(404, f"model '{requested}' not found")
    await ex.reply_json(model.show())


async def delete(sim: SimulatedOllama, ex: Exchange) -> None:
    """DELETE /api/delete: 200 with an empty body."""
    request = decode_request(ex.body, "DeleteRequest", _MANAGE_FIELDS)
    requested = request.get("model") or request.get("name") or ""
    if not requested:
        raise BadRequest(400, f'name "{requested}" is invalid')
    if not sim.library.remove(requested):
        raise BadRequest(404, f"model '{requested}' not found")
    await ex.reply(200, b"", None)


async def copy(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/copy: 200 with an empty body."""
    request = decode_request(ex.body, "CopyRequest", {"source": str, "destination": str})
    source, destination = request.get("source") or "", request.get("destination") or ""
    if not source:
        raise BadRequest(400, f'source "{source}" is invalid')
    if not destination:
        raise BadRequest(400, f'destination "{destination}" is invalid')
    model = sim.library.find(source)
    if model is None:
        raise BadRequest(404, f'model "{source}" not found')
    sim.library.add(model.renamed(destination))
    await ex.reply(200, b"", None)


async def pull(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/pull: any name can be pulled; progress lines end with `success`."""
    request = decode_request(ex.body, "PullRequest", _MANAGE_FIELDS)
    requested = _required_name(request)
    model = sim.library.find(requested) or pulled_model(requested)
    statuses: list[dict[str, Any]] = [
        {"status": "pulling manifest"},
        {
            "status": f"pulling {model.digest[:12]}",
            "digest": f"sha256:{model.digest}",
            "total": model.size,
            "completed": model.size,
        },
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    sim.library.add(model)
    await _progress(ex, statuses, request.get("stream") is not False)


async def push(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/push: progress lines end with `success`."""
    request = decode_request(ex.body, "PushRequest", _MANAGE_FIELDS)
    requested = _required_name(request)
    model = sim.library.find(requested)
    if model is None:
        raise BadRequest(404, f"model '{requested}' not found")
    statuses: list[dict[str, Any]] = [
        {"status": "retrieving manifest"},
        {
            "status": f"pushing {model.digest[:12]}",
            "digest": f"sha256:{model.digest}",
            "total": model.size,
            "completed": model.size,
        },
        {"status": "pushing manifest"},
        {"status": "success"},
    ]
    await _progress(ex, statuses, request.get("stream") is not False)


async def create(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/create: a new model `from` an installed one (or a fresh one)."""
    request = decode_request(ex.body, "CreateRequest", {**_MANAGE_FIELDS, "from": str})
    requested = _required_name(request)
    base = sim.library.find(request.get("from") or "")
    model = base.renamed(requested) if base else pulled_model(requested)
    statuses: list[dict[str, Any]] = [
        {"status": f"using existing layer sha256:{model.digest}"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    sim.library.add(model)
    await _progress(ex, statuses, request.get("stream") is not False)


def _required_name(request: dict[str, Any]) -> str:
    requested = request.get("model") or request.get("name") or ""
    if not requested:
        raise BadRequest(400, "model is required")
    return str(requested)


async def _progress(ex: Exchange, statuses: list[dict[str, Any]], stream: bool) -> None:
    """Progress as NDJSON, or only the last status when `stream` is false (as Ollama does)."""
    if not stream:
        await ex.reply_json(statuses[-1], content_type=JSON_PLAIN)
        return
    await ex.start_stream()
    for status in statuses:
        await ex.write_line(status)
        await asyncio.sleep(0)
    await ex.end_stream()


async def embed(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/embed: `input` a string or a list of strings; empty input only loads."""
    request = decode_request(ex.body, "EmbedRequest", {"model": str, "dimensions": int})
    requested = request.get("model") or ""
    if not requested:
        raise BadRequest(400, "model is required")
    texts = _embed_inputs(request.get("input"))
    model = sim.library.find(requested)
    if model is None:
        raise BadRequest(404, f'model "{requested}" not found, try pulling it first')
    keep_alive = parse_keep_alive(request.get("keep_alive"))
    started = time.perf_counter_ns()
    async with sim.embedding():
        load_ns = await sim.gpu.load_embedder(model, keep_alive)
        if not texts:
            await ex.reply_json({"model": requested, "embeddings": []})
            return
        dimensions = request.get("dimensions") or model.embedding_length
        vectors = [embedding_vector(model.key, text, dimensions) for text in texts]
        await asyncio.sleep(0)
        await ex.reply_json(
            {
                "model": requested,
                "embeddings": vectors,
                "total_duration": max(1, time.perf_counter_ns() - started),
                "load_duration": max(1, load_ns),
                "prompt_eval_count": sum(count_tokens(text) for text in texts),
            }
        )


def _embed_inputs(value: Any) -> list[str]:
    """The texts of an embed `input`; Ollama refuses anything but a string or list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest(400, "invalid input type")


async def embeddings(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/embeddings, the legacy route: `prompt` in, one `embedding` out."""
    request = decode_request(ex.body, "EmbeddingRequest", {"model": str, "prompt": str})
    requested = request.get("model") or ""
    if not requested:
        raise BadRequest(400, "model is required")
    model = sim.library.find(requested)
    if model is None:
        raise BadRequest(404, f'model "{requested}" not found, try pulling it first')
    keep_alive = parse_keep_alive(request.get("keep_alive"))
    async with sim.embedding():
        await sim.gpu.load_embedder(model, keep_alive)
        prompt = request.get("prompt") or ""
        vector = embedding_vector(model.key, prompt, model.embedding_length) if prompt else []
        await ex.reply_json({"embedding": vector})
