"""The simulated GPU: one chat/generate model at a time, embedding models beside it.

A chat or generate request needs its model resident *with its load options* (`num_ctx` and
the like): a different model, or the same one with other load options, waits until the GPU is
idle and then swaps — the resident model unloads and the new one loads for `load_delay`
seconds. Requests for the resident residency run concurrently. Embedding models do not take
the slot: they load once (also `load_delay`) and stay resident beside it until their
keep-alive runs out, as small embedding models do on a real card.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foreman_adapters.simulator.catalog import SimulatedModel
from foreman_adapters.simulator.changes import StateChanges
from foreman_adapters.simulator.text import expiry, expiry_rfc3339

DEFAULT_NUM_CTX = 4096
RELOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""Options that decide how Ollama loads a model: a change means a reload."""


def load_options(options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The load-changing options of a request, with Ollama's defaults filled in."""
    chosen: dict[str, Any] = {"num_ctx": DEFAULT_NUM_CTX}
    for name in RELOAD_OPTIONS:
        if options and options.get(name) is not None:
            chosen[name] = options[name]
    return tuple(sorted((name, repr(value)) for name, value in chosen.items()))


@dataclass(slots=True)
class Loaded:
    """A model in GPU memory, with the options it was loaded with."""

    model: SimulatedModel
    options: tuple[tuple[str, Any], ...]
    expires_at: float | None
    num_ctx: int = DEFAULT_NUM_CTX

    def expired(self, now: float) -> bool:
        """Whether its keep-alive has run out."""
        return self.expires_at is not None and now >= self.expires_at


class SimulatedGpu:
    """Residency, swaps and the load delay of one GPU (see the module doc)."""

    def __init__(self, changes: StateChanges, load_delay: float = 0.0) -> None:
        self.load_delay = load_delay
        self.swaps = 0
        self.embed_loads = 0
        self._changes = changes
        self._slot: Loaded | None = None
        self._loading = False
        self._active = 0
        self._embedders: dict[str, Loaded] = {}

    @property
    def resident(self) -> SimulatedModel | None:
        """The chat/generate model in the slot, if any."""
        self._evict_expired()
        return self._slot.model if self._slot else None

    def reset(self) -> None:
        """Unload everything and zero the counters."""
        self.swaps = self.embed_loads = 0
        self._slot = None
        self._embedders.clear()
        self._changes.notify()

    async def acquire(self, model: SimulatedModel, options: Mapping[str, Any] | None) -> int:
        """Wait until `model` with `options` holds the slot, loading it if need be.

        Returns the nanoseconds spent loading (0 when it was resident). Pair with `release`.
        """
        wanted = load_options(options)
        await self._changes.wait_until(lambda: self._may_enter(model, wanted))
        if self._holds(model, wanted):
            self._active += 1
            return 0
        return await self._swap_to(model, wanted, _num_ctx(options))

    def release(self, keep_alive: float | None) -> None:
        """A request that `acquire`d is done; the model stays for `keep_alive` seconds."""
        self._active -= 1
        if self._slot is not None:
            self._slot.expires_at = expiry(keep_alive)
        self._evict_expired()
        self._changes.notify()

    def unload(self, model: SimulatedModel) -> None:
        """Unload `model` now, or as soon as its running requests finish."""
        if self._slot is not None and self._slot.model.key == model.key:
            self._slot.expires_at = time.monotonic()
        self._embedders.pop(model.key, None)
        self._evict_expired()
        self._changes.notify()

    async def load_embedder(self, model: SimulatedModel, keep_alive: float | None) -> int:
        """Make an embedding model resident beside the slot; returns nanoseconds spent loading."""
        loaded = self._embedders.get(model.key)
        started = time.perf_counter_ns()
        must_load = loaded is None or loaded.expired(time.monotonic())
        if must_load:
            await asyncio.sleep(self.load_delay)
            self.embed_loads += 1
        self._embedders[model.key] = Loaded(
            model, load_options(None), expiry(keep_alive), model.context_length
        )
        self._changes.notify()
        return time.perf_counter_ns() - started if must_load else 0

    def ps_entries(self) -> list[dict[str, Any]]:
        """/api/ps `models`: longest remaining keep-alive first, as Ollama sorts them."""
        self._evict_expired()
        now = time.monotonic()
        loaded = [e for e in self._embedders.values() if not e.expired(now)]
        if self._slot is not None:
            loaded.append(self._slot)
        far_future = float("inf")
        loaded.sort(
            key=lambda e: far_future if e.expires_at is None else e.expires_at, reverse=True
        )
        return [e.model.ps_entry(expiry_rfc3339(e.expires_at), e.num_ctx) for e in loaded]

    def _holds(self, model: SimulatedModel, wanted: tuple[tuple[str, Any], ...]) -> bool:
        slot = self._slot
        return slot is not None and slot.model.key == model.key and slot.options == wanted

    def _may_enter(self, model: SimulatedModel, wanted: tuple[tuple[str, Any], ...]) -> bool:
        self._evict_expired()
        return not self._loading and (self._holds(model, wanted) or self._active == 0)

    async def _swap_to(
        self, model: SimulatedModel, wanted: tuple[tuple[str, Any], ...], num_ctx: int
    ) -> int:
        self._loading = True
        self._slot = None
        started = time.perf_counter_ns()
        try:
            await asyncio.sleep(self.load_delay)
        finally:
            self._loading = False
            self._changes.notify()
        self._slot = Loaded(model, wanted, expires_at=None, num_ctx=num_ctx)
        self.swaps += 1
        self._active += 1
        return time.perf_counter_ns() - started

    def _evict_expired(self) -> None:
        now = time.monotonic()
        if self._slot is not None and self._active == 0 and self._slot.expired(now):
            self._slot = None
        for key in [k for k, e in self._embedders.items() if e.expired(now)]:
            del self._embedders[key]


def _num_ctx(options: Mapping[str, Any] | None) -> int:
    """The context length a request loads its model with."""
    value = (options or {}).get("num_ctx")
    return int(value) if isinstance(value, int | float) and value > 0 else DEFAULT_NUM_CTX
