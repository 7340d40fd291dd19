"""The simulated Ollama's blob store and HEAD routes answer as Ollama's gin router does
(server/routes.go: HeadBlobHandler, CreateBlobHandler and the explicit HEAD routes)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from foreman_adapters.simulator import SimulatedOllama

pytestmark = pytest.mark.anyio

DATA = b"weights " * 10_000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
OTHER = "sha256:" + "0" * 64


@pytest.fixture
def sim() -> SimulatedOllama:
    return SimulatedOllama()


@pytest.fixture
async def http(sim: SimulatedOllama) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as raw:
        yield raw


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
async def test_head_answers_like_get_without_a_body(http: httpx.AsyncClient, path: str) -> None:
    got, head = await http.get(path), await http.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize("path", ["/api/ps", "/v1/models"])
async def test_head_is_not_allowed_where_ollama_registers_only_get(
    http: httpx.AsyncClient, path: str
) -> None:
    assert (await http.head(path)).status_code == 405


async def test_a_blob_uploads_streamed_and_is_then_there(
    http: httpx.AsyncClient, sim: SimulatedOllama
) -> None:
    path = f"/api/blobs/{DIGEST}"
    assert (await http.head(path)).status_code == 404

    async def chunks() -> AsyncIterator[bytes]:
        yield DATA[:1000]
        # The handler runs (and counts the request) while the body is still arriving.
        await sim.wait_for(lambda: sim.requests[path] == 2)
        yield DATA[1000:]

    with anyio.fail_after(10):
        created = await http.post(path, content=chunks())
    assert (created.status_code, created.content) == (201, b"")
    assert sim.blobs == {DIGEST.replace(":", "-"): len(DATA)}
    assert (await http.head(path)).status_code == 200
    assert (await http.head(path.replace("sha256:", "sha256-"))).status_code == 200
    again = await http.post(path, content=b"not even read")
    assert again.status_code == 200  # already there: Ollama answers before reading the body
    assert (await http.get("/_sim/stats")).json()["blobs"] == 1


async def test_a_digest_mismatch_is_refused_but_the_bytes_are_kept(
    http: httpx.AsyncClient,
) -> None:
    refused = await http.post(f"/api/blobs/{OTHER}", content=DATA)
    assert refused.status_code == 400
    assert refused.json() == {"error": f'digest mismatch, expected "{OTHER}", got "{DIGEST}"'}
    assert (await http.head(f"/api/blobs/{OTHER}")).status_code == 404
    assert (await http.head(f"/api/blobs/{DIGEST}")).status_code == 200  # as Ollama's store


async def test_reset_forgets_blobs(http: httpx.AsyncClient, sim: SimulatedOllama) -> None:
    await http.post(f"/api/blobs/{DIGEST}", content=DATA)
    sim.reset()
    assert (await http.head(f"/api/blobs/{DIGEST}")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "status", "payload"),
    [
        ("POST", "/api/blobs/sha256:abc", 400, b'{"error":"invalid digest format"}'),
        ("HEAD", "/api/blobs/md5:" + "0" * 64, 400, b""),
        ("POST", "/api/blobs/SHA256:" + "0" * 64, 400, b'{"error":"invalid digest format"}'),
        ("GET", f"/api/blobs/{OTHER}", 405, b"405 method not allowed"),
        ("POST", "/api/blobs/", 404, b"404 page not found"),
        ("POST", f"/api/blobs/{OTHER}/x", 404, b"404 page not found"),
    ],
)
async def test_blob_route_errors(
    http: httpx.AsyncClient, method: str, path: str, status: int, payload: bytes
) -> None:
    response = await http.request(method, path, content=b"x")
    assert (response.status_code, response.content) == (status, payload)
