"""foreman's HTTP routes, one module per group."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from foreman_app.routes.health import banner, healthz
from foreman_app.routes.jobs import JOB_ROUTES
from foreman_app.routes.ollama_proxy import PROXY_ROUTES
from foreman_app.routes.queued import QUEUED_ROUTES

ROUTES: list[ControllerRouterHandler] = [
    banner,
    healthz,
    *QUEUED_ROUTES,
    *JOB_ROUTES,
    *PROXY_ROUTES,
]
"""Every route `create_app` serves."""
