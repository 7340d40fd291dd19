"""Checks a request passes before it becomes a job."""

from __future__ import annotations

from foreman_core.errors import ModelNotFound, TargetUnreachable
from foreman_core.ports import ModelInventory


async def require_model(inventory: ModelInventory, name: str) -> None:
    """Raise `ModelNotFound` when the target lacks the model.

    When the target cannot be asked (the inventory is degraded) an unknown model raises
    `TargetUnreachable` instead: "not found" would be a guess, and a wrong one tells the client
    to give up rather than to try again.
    """
    if await inventory.has_model(name):
        return
    if inventory.degraded:
        raise TargetUnreachable(f"cannot check model '{name}': the Ollama target is unreachable")
    raise ModelNotFound(name)
