"""An unknown model is 'not found' only when the target could be asked."""

import pytest

from foreman_core.admission import require_model
from foreman_core.errors import ModelNotFound, TargetUnreachable

pytestmark = pytest.mark.anyio


class ListedModels:
    """A ModelInventory that knows a fixed set of models, reachable or not."""

    def __init__(self, *names: str, degraded: bool = False) -> None:
        self.names = set(names)
        self.degraded = degraded

    def resident(self) -> list[str]:
        return []

    async def has_model(self, name: str) -> bool:
        return name in self.names

    async def refresh(self) -> None:
        """Nothing to poll."""


async def test_a_known_model_passes() -> None:
    await require_model(ListedModels("llama3.2"), "llama3.2")


async def test_an_unknown_model_is_not_found_while_the_target_answers() -> None:
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        await require_model(ListedModels("llama3.2"), "nope")


async def test_an_unknown_model_is_a_target_failure_while_the_target_is_down() -> None:
    with pytest.raises(TargetUnreachable, match="unreachable"):
        await require_model(ListedModels("llama3.2", degraded=True), "nope")


async def test_a_known_model_passes_even_while_the_target_is_down() -> None:
    await require_model(ListedModels("llama3.2", degraded=True), "llama3.2")
