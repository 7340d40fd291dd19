"""`create_app(container)`: the Litestar application, its dependencies and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.types import ControllerRouterHandler

from foreman_app.auth import BearerAuth
from foreman_app.container import Container
from foreman_app.errors import exception_handlers
from foreman_app.routes import ROUTES

logger = logging.getLogger("foreman.app")


def create_app(
    container: Container, extra_routes: list[ControllerRouterHandler] | None = None
) -> Litestar:
    """The foreman server: every route, wired to the objects of `container`."""
    settings = container.settings()
    return Litestar(
        route_handlers=[*ROUTES, *(extra_routes or [])],
        dependencies=dependencies(container),
        exception_handlers=exception_handlers(settings.auth_tokens),
        middleware=[BearerAuth(settings.auth_tokens)] if settings.auth_tokens else [],
        request_max_body_size=settings.max_body_size,
        lifespan=[_lifespan(container)],
        # foreman configures logging itself (server.py); Litestar would replace the root logger.
        logging_config=None,
    )


def dependencies(container: Container) -> dict[str, Provide]:
    """What handlers may ask for by parameter name, each fed from its container provider."""
    providers: dict[str, Callable[[], Any]] = {
        "settings": container.settings,
        "clock": container.clock,
        "ids": container.ids,
        "store": container.store,
        "target": container.target,
        "inventory": container.inventory,
        "worker": container.worker,
        "webhooks": container.webhook_dispatcher,
        "jobs": container.async_jobs,
        "sync_jobs": container.sync_jobs,
    }
    return {name: _provide(provider) for name, provider in providers.items()}


def _provide(provider: Callable[[], Any]) -> Provide:
    def dependency() -> Any:
        return provider()

    return Provide(dependency, sync_to_thread=False)


def _lifespan(
    container: Container,
) -> Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        settings = container.settings()
        inventory = container.inventory()
        worker = container.worker()
        dispatcher = container.webhook_dispatcher()
        tasks: list[asyncio.Task[None]] = []
        try:
            await _first_poll(inventory)
            tasks.append(_background(inventory.run(), "inventory poller"))
            tasks.append(_background(worker.run(), "worker"))
            tasks.append(_background(dispatcher.run(), "webhook dispatcher"))
            tasks.append(_background(_prune_finished_jobs(container), "job pruner"))
            if settings.embed_model:
                tasks.append(_background(_warm(container, settings.embed_model), "warm-up"))
            yield
        finally:
            await worker.stop(settings.shutdown_grace.total_seconds())
            await dispatcher.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _close(container)

    return lifespan


async def _first_poll(inventory: Any) -> None:
    """Fill the inventory before the first request; an unreachable target leaves it degraded.

    A poll gives up after the inventory's poll timeout, so a target that never answers only
    delays start-up that long.
    """
    await inventory.refresh()
    if inventory.degraded:
        logger.warning("the target did not answer the first inventory poll; starting degraded")


async def _warm(container: Container, model: str) -> None:
    """Load the embedding model for good (`keep_alive: -1`); a failure is only logged."""
    try:
        await container.target().warm(model)
        logger.info("embedding model %s warmed", model)
    except Exception as exc:
        logger.warning("could not warm embedding model %s: %s", model, exc)


PRUNE_EVERY = timedelta(minutes=10)


async def _prune_finished_jobs(container: Container) -> None:
    """Delete finished jobs older than FOREMAN_JOB_TTL, now and then."""
    settings, store, clock = container.settings(), container.store(), container.clock()
    every = min(PRUNE_EVERY, settings.job_ttl)
    while True:
        try:
            pruned = store.prune_finished(clock.now() - settings.job_ttl)
            if pruned:
                logger.info("pruned %d finished jobs", pruned)
        except Exception:
            logger.exception("pruning finished jobs failed")
        await asyncio.sleep(every.total_seconds())


def _background(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_log_crash)
    return task


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


async def _close(container: Container) -> None:
    connections_kept = (
        container.ollama_transport(),
        container.inventory_transport(),
        container.webhook_http(),
    )
    for connections in connections_kept:
        with contextlib.suppress(Exception):
            await connections.aclose()
    container.store().close()
