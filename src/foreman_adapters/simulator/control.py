"""The simulator's control API under /_sim, for tests and benchmarks in another process."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.wire import Exchange

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

PREFIX = "/_sim/"
_CONFIG_FIELDS = ("load_delay", "ttft", "token_delay", "tokens")


async def handle(sim: SimulatedOllama, ex: Exchange) -> None:
    """Serve one /_sim request (never counted, never faulted)."""
    action = ex.path.removeprefix(PREFIX)
    if action == "stats" and ex.method == "GET":
        await ex.reply_json(sim.stats())
        return
    if ex.method != "POST" or action not in _ACTIONS:
        await ex.reply_error(404, f"no control route {ex.method} {ex.path}")
        return
    try:
        payload = json.loads(ex.body) if ex.body.strip() else {}
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
        _ACTIONS[action](sim, payload)
    except (ValueError, TypeError, KeyError) as exc:
        await ex.reply_error(400, str(exc))
        return
    await ex.reply_json(sim.stats())


def _faults(sim: SimulatedOllama, payload: dict[str, Any]) -> None:
    if "drop_connections" in payload:
        sim.drop_connections(int(payload["drop_connections"]))
    if "fail_next" in payload:
        spec = dict(payload["fail_next"])
        body = spec.get("body", "simulated failure")
        sim.fail_next(
            int(spec.get("count", 1)),
            int(spec.get("status", 500)),
            body if isinstance(body, str | dict) else json.dumps(body),
            retry_after=spec.get("retry_after"),
        )
    if "fail_mid_stream" in payload:
        spec = dict(payload["fail_mid_stream"])
        sim.fail_mid_stream(
            int(spec.get("count", 1)),
            after_chunks=int(spec.get("after_chunks", 1)),
            error=spec.get("error"),
        )
    if "down" in payload:
        (sim.down if payload["down"] else sim.up)()


def _config(sim: SimulatedOllama, payload: dict[str, Any]) -> None:
    unknown = set(payload) - set(_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    for name in _CONFIG_FIELDS:
        if name in payload:
            kind = int if name == "tokens" else float
            setattr(sim, name, kind(payload[name]))


_ACTIONS: dict[str, Callable[[SimulatedOllama, dict[str, Any]], None]] = {
    "faults": _faults,
    "config": _config,
    "hold": lambda sim, _payload: sim.hold(),
    "release": lambda sim, payload: sim.release(
        None if payload.get("count") is None else int(payload["count"])
    ),
    "reset": lambda sim, _payload: sim.reset(),
}
