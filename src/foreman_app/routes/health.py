"""The routes that tell whether foreman is up: Ollama's `/` banner and foreman's `/healthz`."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod

from foreman_app.auth import PUBLIC
from foreman_app.config import Settings, without_credentials
from foreman_core.ports import ModelInventory


@route("/", http_method=[HttpMethod.GET, HttpMethod.HEAD], opt={PUBLIC: True})
async def banner() -> Response[bytes]:
    """Ollama's liveness banner, which clients probe before anything else."""
    return Response(b"Ollama is running", media_type="text/plain")


@get("/healthz", opt={PUBLIC: True})
async def healthz(
    settings: NamedDependency[Settings], inventory: NamedDependency[ModelInventory]
) -> dict[str, Any]:
    """foreman is up; `degraded` while the Ollama target cannot be reached."""
    target = without_credentials(settings.ollama_url)  # the route needs no token
    return {"status": "ok", "degraded": inventory.degraded, "target": target}
