"""`SimulatedOllama`: the ASGI app, its state, its counters and its fault switches."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from foreman_adapters.simulator import anthropic, blobs, control, library, openai, responses
from foreman_adapters.simulator.catalog import (
    DEFAULT_MODELS,
    ModelLibrary,
    SimulatedModel,
    canonical_name,
    pulled_model,
)
from foreman_adapters.simulator.changes import StateChanges
from foreman_adapters.simulator.dialect import DialectRoute
from foreman_adapters.simulator.faults import Faults, HttpFailure, MidStreamFailure
from foreman_adapters.simulator.gpu import SimulatedGpu
from foreman_adapters.simulator.inference import CHAT, GENERATE, Plan, drop, handle_inference
from foreman_adapters.simulator.text import reply_pieces, thinking_pieces
from foreman_adapters.simulator.wire import (
    JSON_UTF8,
    TEXT_PLAIN,
    BadRequest,
    Exchange,
    Receive,
    Scope,
    Send,
    encode,
)

Handler = Callable[["SimulatedOllama", Exchange], Awaitable[None]]


async def _chat(sim: SimulatedOllama, ex: Exchange) -> None:
    await handle_inference(sim, ex, CHAT)


async def _generate(sim: SimulatedOllama, ex: Exchange) -> None:
    await handle_inference(sim, ex, GENERATE)


ROUTES: Mapping[str, Mapping[str, Handler]] = {
    "/": {"GET": library.root, "HEAD": library.root},
    "/api/version": {"GET": library.version, "HEAD": library.version},
    "/api/tags": {"GET": library.tags, "HEAD": library.tags},
    "/api/ps": {"GET": library.ps},
    "/api/show": {"POST": library.show},
    "/api/chat": {"POST": _chat},
    "/api/generate": {"POST": _generate},
    "/api/embed": {"POST": library.embed},
    "/api/embeddings": {"POST": library.embeddings},
    "/api/pull": {"POST": library.pull},
    "/api/push": {"POST": library.push},
    "/api/create": {"POST": library.create},
    "/api/copy": {"POST": library.copy},
    "/api/delete": {"DELETE": library.delete},
    "/v1/chat/completions": {"POST": DialectRoute(openai.chat_request, _chat, openai.error_body)},
    "/v1/completions": {
        "POST": DialectRoute(openai.completion_request, _generate, openai.error_body)
    },
    "/v1/embeddings": {
        "POST": DialectRoute(openai.embed_request, library.embed, openai.error_body)
    },
    "/v1/models": {"GET": DialectRoute(openai.list_request, library.tags, openai.error_body)},
    "/v1/responses": {"POST": DialectRoute(responses.responses_request, _chat, openai.error_body)},
    "/v1/messages": {"POST": DialectRoute(anthropic.messages_request, _chat, anthropic.error_body)},
}
"""The routes the simulator serves, as Ollama's route table pairs them: each compatibility route
is its dialect's middleware in front of a native handler. Anything else is gin's 404 or 405."""

PARAM_ROUTES: Mapping[str, Mapping[str, Handler]] = {
    openai.MODELS_PREFIX: {
        "GET": DialectRoute(openai.retrieve_request, library.show, openai.error_body)
    },
    blobs.PREFIX: {"HEAD": blobs.head, "POST": blobs.upload},
}
"""Routes ending in one path parameter (gin's `:model`, `:digest`): a non-empty last segment."""


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """One chat or generate request that ran: `outcome` is done, aborted or failed.

    `prompt` is the generate prompt or the chat's last message content (what `reply` reads).
    """

    model: str
    requested: str
    kind: str
    outcome: str
    prompt: str = ""


class SimulatedOllama:
    """A simulated Ollama with one GPU, as an ASGI app (see the package docstring)."""

    def __init__(
        self,
        models: Iterable[SimulatedModel | str] | None = None,
        *,
        load_delay: float = 0.0,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        tokens: int = 8,
        version: str = "0.12.6",
    ) -> None:
        chosen = DEFAULT_MODELS if models is None else models
        self._initial = tuple(
            m if isinstance(m, SimulatedModel) else pulled_model(m) for m in chosen
        )
        self.ttft = ttft
        self.token_delay = token_delay
        self.tokens = tokens
        self.version = version
        self.changes = StateChanges()
        self.library = ModelLibrary(self._initial)
        self.blobs: dict[str, int] = {}
        """Uploaded blobs: their sizes by Ollama's file name (`sha256-<hex>`)."""
        self.gpu = SimulatedGpu(self.changes, load_delay)
        self.faults = Faults()
        self._holding = False
        self._passes = 0
        self._zero_counters()

    @classmethod
    def realistic(cls, **overrides: Any) -> SimulatedOllama:
        """Delays like a small model on a consumer GPU, for `foreman demo`."""
        settings: dict[str, Any] = {
            "load_delay": 1.5,
            "ttft": 0.15,
            "token_delay": 0.03,
            "tokens": 40,
            **overrides,
        }
        return cls(**settings)

    def _zero_counters(self) -> None:
        self.requests: Counter[str] = Counter()
        self.generations: list[GenerationRecord] = []
        self.aborted = 0
        self.inflight_generate = self.max_inflight_generate = 0
        self.inflight_embed = self.max_inflight_embed = 0
        self.held = 0

    # -- configuration and observation -------------------------------------------------------

    @property
    def load_delay(self) -> float:
        """Seconds a model swap takes."""
        return self.gpu.load_delay

    @load_delay.setter
    def load_delay(self, seconds: float) -> None:
        self.gpu.load_delay = seconds

    @property
    def swaps(self) -> int:
        """Loads of a chat/generate model that was not resident (a reload with new options too)."""
        return self.gpu.swaps

    @property
    def resident(self) -> str | None:
        """The name of the model in the GPU slot, if any."""
        model = self.gpu.resident
        return model.name if model else None

    @property
    def completed(self) -> list[str]:
        """Models of the finished generations, in the order they finished."""
        return [g.model for g in self.generations if g.outcome == "done"]

    def reply(self, model: str, prompt: str, tokens: int | None = None) -> str:
        """The text `model` answers `prompt` with (for chat: the last message's content)."""
        return "".join(reply_pieces(canonical_name(model), prompt, tokens or self.tokens))

    def thinking(self, model: str, prompt: str) -> str:
        """What a thinking model thinks before answering `prompt`."""
        return "".join(thinking_pieces(canonical_name(model), prompt, max(1, self.tokens // 2)))

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-ready data (also served at GET /_sim/stats)."""
        return {
            "swaps": self.swaps,
            "embed_loads": self.gpu.embed_loads,
            "resident": self.resident,
            "inflight_generate": self.inflight_generate,
            "max_inflight_generate": self.max_inflight_generate,
            "inflight_embed": self.inflight_embed,
            "max_inflight_embed": self.max_inflight_embed,
            "held": self.held,
            "holding": self._holding,
            "passes": self._passes,
            "aborted": self.aborted,
            "faults": {
                "drop_connections": self.faults.drops,
                "fail_next": len(self.faults.failures),
                "fail_mid_stream": len(self.faults.mid_stream),
                "down": self.faults.down,
            },
            "blobs": len(self.blobs),
            "requests": dict(self.requests),
            "generations": [asdict(g) for g in self.generations],
        }

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once `predicate()` holds, re-checked on every state change; TimeoutError after
        `timeout` seconds."""
        await asyncio.wait_for(self.changes.wait_until(predicate), timeout)

    async def wait_for_held(self, count: int = 1, timeout: float = 5.0) -> None:
        """Return once `count` requests wait at the hold gate."""
        await self.wait_for(lambda: self.held >= count, timeout)

    # -- fault switches ------------------------------------------------------------------------

    def drop_connections(self, count: int = 1) -> None:
        """Reset the connection of the next `count` chat/generate requests, answering nothing."""
        self.faults.drops += count

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        body: str | bytes | Mapping[str, Any] = "simulated failure",
        *,
        retry_after: float | None = None,
        content_type: str = JSON_UTF8,
    ) -> None:
        """Answer the next `count` chat/generate requests with an HTTP error.

        A str body becomes `{"error": body}`; a mapping is sent as JSON; bytes as they are.
        """
        if isinstance(body, str):
            raw = encode({"error": body})
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = encode(dict(body))
        failure = HttpFailure(status, raw, content_type, retry_after)
        self.faults.failures.extend([failure] * count)

    def fail_mid_stream(
        self, count: int = 1, *, after_chunks: int = 1, error: str | None = None
    ) -> None:
        """Break the next `count` streamed generations after `after_chunks` lines: with `error`,
        end with Ollama's `{"error": …}` line; without, reset the connection."""
        self.faults.mid_stream.extend([MidStreamFailure(after_chunks, error)] * count)

    def down(self) -> None:
        """Refuse every Ollama route (the connection is reset); /_sim stays up."""
        self.faults.down = True

    def up(self) -> None:
        """Undo `down`."""
        self.faults.down = False

    def hold(self) -> None:
        """Make chat/generate requests (loads too) wait once their model holds the GPU, counted
        in flight and in `held`, until `release`; another model's requests wait for the GPU."""
        self._holding = True
        self._passes = 0

    def release(self, count: int | None = None) -> None:
        """Let held requests proceed; with `count`, only `count` more requests pass the gate (any
        of those waiting or arriving) and the hold goes on for the rest."""
        if count is None:
            self._holding = False
            self._passes = 0
        elif self._holding:
            self._passes += count
        self.changes.notify()

    def reset(self) -> None:
        """Back to the initial state: models, no blobs, empty GPU, no faults, no hold, counters
        at zero."""
        self.faults.clear()
        self.release()
        self.library = ModelLibrary(self._initial)
        self.blobs.clear()
        self.gpu.reset()
        self._zero_counters()

    # -- bookkeeping used by the handlers ------------------------------------------------------

    async def hold_gate(self) -> None:
        """Wait here while the simulator is held."""
        if not self._holding:
            return
        if self._passes > 0:
            self._passes -= 1
            return
        self.held += 1
        self.changes.notify()
        try:
            await self.changes.wait_until(lambda: not self._holding or self._passes > 0)
            if self._holding:
                self._passes -= 1
        finally:
            self.held -= 1
            self.changes.notify()

    def enter_generate(self) -> None:
        """A chat/generate request is now in flight."""
        self.inflight_generate += 1
        self.max_inflight_generate = max(self.max_inflight_generate, self.inflight_generate)
        self.changes.notify()

    def leave_generate(self) -> None:
        """A chat/generate request is no longer in flight."""
        self.inflight_generate -= 1
        self.changes.notify()

    @asynccontextmanager
    async def embedding(self) -> AsyncIterator[None]:
        """Count an embedding request in flight."""
        self.inflight_embed += 1
        self.max_inflight_embed = max(self.max_inflight_embed, self.inflight_embed)
        self.changes.notify()
        try:
            yield
        finally:
            self.inflight_embed -= 1
            self.changes.notify()

    def record(self, plan: Plan, outcome: str) -> None:
        """Log a generation that ran to `outcome`."""
        self.generations.append(
            GenerationRecord(plan.model.name, plan.requested, plan.kind, outcome, plan.prompt)
        )
        if outcome == "aborted":
            self.aborted += 1
        self.changes.notify()

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        ex = Exchange(scope, receive, send)
        # A blob upload streams its body through the hash instead of holding it.
        streams_body = ex.method == "POST" and ex.path.startswith(blobs.PREFIX)
        if not streams_body and not await ex.read_body():
            return
        if ex.path.startswith(control.PREFIX):
            await control.handle(self, ex)
            return
        self.requests[ex.path] += 1
        self.changes.notify()
        if self.faults.down:
            await drop(ex, refused=True)
            return
        await self._route(ex)

    async def _route(self, ex: Exchange) -> None:
        methods = ROUTES.get(ex.path) or _param_route(ex.path)
        if methods is None:
            await ex.reply(404, b"404 page not found", TEXT_PLAIN)
            return
        handler = methods.get(ex.method)
        if handler is None:
            await ex.reply(405, b"405 method not allowed", TEXT_PLAIN)
            return
        try:
            await handler(self, ex)
        except BadRequest as exc:
            if not ex.started:
                await ex.reply_error(exc.status, exc.message)


def _param_route(path: str) -> Mapping[str, Handler] | None:
    for prefix, methods in PARAM_ROUTES.items():
        parameter = path.removeprefix(prefix)
        if path.startswith(prefix) and parameter and "/" not in parameter:
            return methods
    return None


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop; acknowledge both."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
