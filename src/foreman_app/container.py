"""The composition root: the one place that decides which implementation serves which port.

Building the container does no I/O; each provider makes its object on first use. Resources that
need closing (the HTTP clients, the store) are closed by the app's lifespan, which also runs the
long-lived tasks (inventory poller, worker, webhook dispatcher). Tests override single providers;
`reach_ollama_through(container, httpx.ASGITransport(app=sim))` puts the simulator behind both
of the transports that reach Ollama.
"""

from __future__ import annotations

import ssl

import httpx
from dependency_injector import containers, providers

from foreman_adapters.aiohttp_transport import AiohttpTransport, client_tls
from foreman_adapters.inventory import PollingModelInventory
from foreman_adapters.ollama import OllamaTarget
from foreman_adapters.sqlite import SqliteJobStore
from foreman_adapters.webhooks import HttpWebhookSender, WebhookHostPolicy, webhook_http_client
from foreman_app.async_jobs import AsyncJobs
from foreman_app.config import Settings
from foreman_app.sync_jobs import SyncJobs
from foreman_core.clock import SystemClock, UlidGenerator
from foreman_core.lull import WorkerLull
from foreman_core.retry import RetryPolicy
from foreman_core.webhooks import WebhookDispatcher
from foreman_core.worker import Worker


def _ollama_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS settings for Ollama from FOREMAN_OLLAMA_CA_FILE and _CLIENT_CERT/_KEY; None
    leaves httpx's default verification, made only if Ollama is reached over HTTPS."""
    if settings.ollama_ca_file is None and settings.ollama_client_cert is None:
        return None
    return client_tls(
        settings.ollama_ca_file, settings.ollama_client_cert, settings.ollama_client_key
    )


def _allowed_hosts(settings: Settings) -> str | None:
    """FOREMAN_WEBHOOK_ALLOWED_HOSTS in the comma-separated form WebhookHostPolicy reads."""
    hosts = settings.webhook_allowed_hosts
    return ",".join(hosts) if hosts else None


class Container(containers.DeclarativeContainer):
    """Every long-lived object of a foreman server, wired from `settings`."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(UlidGenerator)
    store = providers.Singleton(SqliteJobStore, path=settings.provided.db_path, ids=ids)

    ollama_tls = providers.Singleton(_ollama_tls, settings)
    # Ollama is reached directly: HTTP_PROXY and the like are for webhooks only (ADR 0017).
    ollama_transport = providers.Singleton(AiohttpTransport, tls=ollama_tls)
    target = providers.Singleton(
        OllamaTarget,
        transport=ollama_transport,
        base_url=settings.provided.ollama_url,
        token=settings.provided.ollama_token,
    )
    # The inventory's polls judge whether Ollama answers; on connections of their own they never
    # wait behind the requests they are judging (long pulls or embeds holding every slot).
    inventory_transport = providers.Singleton(AiohttpTransport, max_connections=2, tls=ollama_tls)
    inventory = providers.Singleton(
        PollingModelInventory,
        target=providers.Singleton(
            OllamaTarget,
            transport=inventory_transport,
            base_url=settings.provided.ollama_url,
            token=settings.provided.ollama_token,
        ),
        interval=settings.provided.poll_interval.total_seconds.call(),
    )

    webhook_policy = providers.Singleton(
        WebhookHostPolicy, allowed=providers.Callable(_allowed_hosts, settings)
    )
    webhook_http = providers.Singleton(webhook_http_client, policy=webhook_policy)
    webhook_sender = providers.Singleton(
        HttpWebhookSender,
        http=webhook_http,
        secret=settings.provided.webhook_secret,
        clock=clock,
        policy=webhook_policy,
    )
    worker_lull = providers.Singleton(WorkerLull)
    webhook_dispatcher = providers.Singleton(
        WebhookDispatcher,
        outbox=store,
        store=store,
        sender=webhook_sender,
        clock=clock,
        public_url=settings.provided.public_url,
        lull=worker_lull,
    )

    retry_policy = providers.Singleton(RetryPolicy)
    worker = providers.Singleton(
        Worker,
        store=store,
        target=target,
        inventory=inventory,
        clock=clock,
        policy=retry_policy,
        max_wait=settings.provided.max_wait,
        on_transition=webhook_dispatcher.provided.wake,
        lull=worker_lull,
    )

    async_jobs = providers.Singleton(
        AsyncJobs,
        settings=settings,
        clock=clock,
        ids=ids,
        store=store,
        inventory=inventory,
        worker=worker,
        webhooks=webhook_dispatcher,
        webhook_policy=webhook_policy,
    )
    sync_jobs = providers.Singleton(
        SyncJobs,
        settings=settings,
        clock=clock,
        ids=ids,
        inventory=inventory,
        worker=worker,
    )


def build_container(settings: Settings) -> Container:
    """A container for `settings`; nothing is built until it is first asked for."""
    container = Container()
    container.settings.override(providers.Object(settings))
    return container


def reach_ollama_through(container: Container, transport: httpx.AsyncBaseTransport) -> None:
    """Send everything meant for Ollama — requests and the inventory's polls — on `transport`
    (tests hand it an `httpx.ASGITransport` over the simulator)."""
    container.ollama_transport.override(providers.Object(transport))
    container.inventory_transport.override(providers.Object(transport))
