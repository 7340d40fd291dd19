"""The `WaitingClient` contract, run against the app's `LiveResponse` and the worker tests'
`FakeClient`: what `started` and `finished` say after each order of calls the worker makes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fakes_worker import FakeClient
from foreman_app.live import LiveResponse
from foreman_core import TargetRejected
from foreman_core.ports import AbortReason, WaitingClient

pytestmark = pytest.mark.anyio

IMPLEMENTATIONS: list[Callable[[], WaitingClient]] = [LiveResponse, FakeClient]


@pytest.fixture(params=IMPLEMENTATIONS, ids=["LiveResponse", "FakeClient"])
def client(request: pytest.FixtureRequest) -> WaitingClient:
    """A new client of each implementation."""
    made: WaitingClient = request.param()
    return made


def state(client: WaitingClient) -> tuple[bool, bool]:
    """(started, finished)."""
    return client.started, client.finished


async def test_a_new_client_has_neither_started_nor_finished(client: WaitingClient) -> None:
    assert state(client) == (False, False)


async def test_begin_starts_the_body_and_end_finishes_it(client: WaitingClient) -> None:
    client.begin(200, "application/x-ndjson")
    assert state(client) == (True, False)
    client.send(b"a\n")
    assert state(client) == (True, False)
    client.end()
    assert state(client) == (True, True)


async def test_a_rejection_finishes_it_without_a_body(client: WaitingClient) -> None:
    client.reject(TargetRejected(400, b'{"error":"invalid"}'))
    assert state(client) == (False, True)


@pytest.mark.parametrize("reason", list(AbortReason))
async def test_an_abort_finishes_it_before_the_body(
    client: WaitingClient, reason: AbortReason
) -> None:
    client.abort(reason, "no")
    assert state(client) == (False, True)


async def test_an_abort_finishes_a_body_under_way(client: WaitingClient) -> None:
    client.begin(200, "application/x-ndjson")
    client.send(b"a\n")
    client.abort(AbortReason.SHUTDOWN, "interrupted")
    assert state(client) == (True, True)
