"""`PollingModelInventory`: the ModelInventory port, kept fresh by polling /api/tags and /api/ps."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from foreman_adapters.ollama import OllamaTarget
from foreman_core.job import normalize_model


def _models_of(listing: Any) -> list[dict[str, Any]]:
    """The `models` of a tags/ps answer; null or malformed becomes [] (clients reject null)."""
    models = listing.get("models") if isinstance(listing, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _name_of(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")


def _lookup_key(name: str) -> str:
    """Ollama matches model names case-insensitively, `:latest` when untagged."""
    return normalize_model(name)


class PollingModelInventory:
    """Which models the target has installed (/api/tags) and loaded (/api/ps).

    Polls every `interval` seconds in `run()`. A failed poll keeps the last good answers and
    marks the inventory degraded until a poll succeeds again (polled every `degraded_interval`
    meanwhile). Concurrent refreshes share one request pair, so a burst of unknown-model checks
    does not stampede the target.
    """

    POLL_TIMEOUT = 5.0
    """Seconds a poll may take; a target that accepts connections but never answers is down."""
    DEGRADED_INTERVAL = 2.0
    """Seconds between polls while the target is unreachable."""

    def __init__(
        self,
        target: OllamaTarget,
        interval: float,
        logger: logging.Logger | None = None,
        *,
        poll_timeout: float = POLL_TIMEOUT,
        degraded_interval: float = DEGRADED_INTERVAL,
    ) -> None:
        self._target = target
        self._interval = interval
        self._poll_timeout = poll_timeout
        self._degraded_interval = degraded_interval
        self._log = logger or logging.getLogger(__name__)
        self._tags: dict[str, Any] = {"models": []}
        self._ps: dict[str, Any] = {"models": []}
        self._installed: frozenset[str] = frozenset()
        self._degraded = False
        self._in_flight: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        """True while the target is unreachable (the last good inventory is kept)."""
        return self._degraded

    def resident(self) -> list[str]:
        """Normalised names of the loaded models, in the order /api/ps lists them."""
        return [normalize_model(_name_of(m)) for m in self._ps["models"] if _name_of(m)]

    def tags(self) -> dict[str, Any]:
        """The last /api/tags answer as Ollama shaped it (`models` is [] when none)."""
        return {**self._tags, "models": list(self._tags["models"])}

    def ps(self) -> dict[str, Any]:
        """The last /api/ps answer as Ollama shaped it (`models` is [] when none)."""
        return {**self._ps, "models": list(self._ps["models"])}

    async def has_model(self, name: str) -> bool:
        """Whether the model is installed; a miss polls once more before answering no."""
        key = _lookup_key(name)
        if key in self._installed:
            return True
        await self.refresh()
        return key in self._installed

    async def refresh(self) -> None:
        """Poll the target now, joining a poll already under way; never raises for the target."""
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = asyncio.ensure_future(self._poll())
        # shield: a caller that gives up (its client left) must not cancel others' poll
        await asyncio.shield(self._in_flight)

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled; every `degraded_interval` (if
        shorter) while the target is unreachable, however that was found out, so that work
        held for it resumes soon after it is back."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        try:
            while True:
                if self._degraded or loop.time() >= next_poll:
                    await self.refresh()
                    next_poll = loop.time() + self._interval
                await asyncio.sleep(min(self._interval, self._degraded_interval))
        finally:
            if self._in_flight is not None:
                self._in_flight.cancel()

    async def _poll(self) -> None:
        try:
            async with asyncio.timeout(self._poll_timeout):
                tags, ps = await asyncio.gather(self._target.tags(), self._target.ps())
        except TimeoutError:
            self._mark_degraded(TimeoutError(f"no answer within {self._poll_timeout:g} s"))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the target leaves the last good copy
            self._mark_degraded(exc)
            return
        if not isinstance(tags, dict) or not isinstance(ps, dict):
            self._mark_degraded(ValueError("the target's tags or ps is not a JSON object"))
            return
        self._tags = {**tags, "models": _models_of(tags)}
        self._ps = {**ps, "models": _models_of(ps)}
        self._installed = frozenset(_lookup_key(_name_of(m)) for m in self._tags["models"])
        if self._degraded:
            self._log.info("model inventory: target reachable again")
        self._degraded = False

    def _mark_degraded(self, exc: Exception) -> None:
        if not self._degraded:
            self._log.warning("model inventory: polling the target failed: %s", exc)
        self._degraded = True
