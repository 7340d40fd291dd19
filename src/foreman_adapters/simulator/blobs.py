"""HEAD and POST /api/blobs/sha256:<digest>: the blob store `ollama create` uploads files to.

As Ollama's `HeadBlobHandler` and `CreateBlobHandler` (server/routes.go) answer: a digest must
match `sha256[:-]<64 hex>` (else 400 `invalid digest format`); HEAD is 200 when the blob exists
and 404 `blob "<digest>" not found` otherwise. POST answers 200 at once for a blob it has, else
reads the upload chunk by chunk through sha256 — the simulator keeps only the digest and the
size, never the bytes — and answers 201, or 400 `digest mismatch, expected "…", got "…"`; like
Ollama it keeps what it received under its real digest even then. `sha256:x` and `sha256-x`
name one blob (Ollama's file name), though only the colon form can match an upload's digest.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from foreman_adapters.simulator.wire import BadRequest, Exchange

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

PREFIX = "/api/blobs/"
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def _digest(ex: Exchange) -> str:
    digest = ex.path.removeprefix(PREFIX)
    if not _DIGEST.fullmatch(digest):
        raise BadRequest(400, "invalid digest format")
    return digest


def _key(digest: str) -> str:
    """The blob's file name in Ollama's store."""
    return digest.replace(":", "-")


async def head(sim: SimulatedOllama, ex: Exchange) -> None:
    """HEAD /api/blobs/{digest}: 200 if the blob is there, else 404."""
    digest = _digest(ex)
    if _key(digest) not in sim.blobs:
        raise BadRequest(404, f'blob "{digest}" not found')
    await ex.reply(200, b"", None)


async def upload(sim: SimulatedOllama, ex: Exchange) -> None:
    """POST /api/blobs/{digest}: the body streamed through sha256, never held whole."""
    digest = _digest(ex)
    if _key(digest) in sim.blobs:
        await ex.reply(200, b"", None)
        return
    hasher, size = hashlib.sha256(), 0
    while True:
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        hasher.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    received = f"sha256:{hasher.hexdigest()}"
    sim.blobs[_key(received)] = size
    sim.changes.notify()
    if received != digest:
        raise BadRequest(400, f'digest mismatch, expected "{digest}", got "{received}"')
    await ex.reply(201, b"", None)
