"""Fixtures of the worker's tests (`worker_rig.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from worker_rig import RecordingStore, Rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A rig, stopped at the end of the test."""
    built = Rig()
    yield built
    await built.close()


@pytest.fixture
def recording(rig: Rig) -> RecordingStore:
    """The rig's store, recording."""
    rig.store = RecordingStore(rig.ids, rig.target)
    return rig.store
