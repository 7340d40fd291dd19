"""PollingModelInventory against the simulated Ollama, counting polls with its request counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from foreman_adapters.aiohttp_transport import AiohttpTransport
from foreman_adapters.inventory import PollingModelInventory
from foreman_adapters.ollama import OllamaTarget
from foreman_adapters.simulator import DEFAULT_MODELS, SimulatedOllama, serve_simulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def sim() -> SimulatedOllama:
    return SimulatedOllama()


@pytest.fixture
async def inventory(sim: SimulatedOllama) -> AsyncIterator[PollingModelInventory]:
    async with httpx.ASGITransport(app=sim) as transport:
        yield PollingModelInventory(OllamaTarget(transport, "http://ollama"), interval=30)


def polls(sim: SimulatedOllama) -> int:
    return sim.requests["/api/tags"]


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) for a condition on the inventory, which has no event to await."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_refresh_copies_tags_and_ps_as_ollama_shaped_them(
    inventory: PollingModelInventory, sim: SimulatedOllama
) -> None:
    assert inventory.tags() == {"models": []} and inventory.ps() == {"models": []}
    await inventory.refresh()
    assert inventory.tags() == sim.library.tags()
    assert inventory.ps() == {"models": []} and inventory.resident() == []
    assert not inventory.degraded


async def test_resident_lists_normalised_names_in_ps_order(
    inventory: PollingModelInventory, sim: SimulatedOllama
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sim), base_url="http://ollama"
    ) as http:
        await http.post("/api/embed", json={"model": "all-minilm", "input": "", "keep_alive": -1})
        await http.post("/api/chat", json={"model": "gemma3:1b", "messages": []})
    await inventory.refresh()
    assert inventory.resident() == ["all-minilm:latest", "gemma3:1b"]
    assert [m["name"] for m in inventory.ps()["models"]] == ["all-minilm:latest", "gemma3:1b"]


@pytest.mark.parametrize("name", ["llama3.2", "llama3.2:latest", "Llama3.2", " qwen2.5:0.5b"])
async def test_has_model_compares_normalised_names_without_polling_again(
    inventory: PollingModelInventory, sim: SimulatedOllama, name: str
) -> None:
    await inventory.refresh()
    assert await inventory.has_model(name)
    assert polls(sim) == 1


async def test_a_miss_polls_once_more_before_answering(
    inventory: PollingModelInventory, sim: SimulatedOllama
) -> None:
    await inventory.refresh()
    assert not await inventory.has_model("phi3:mini")
    assert polls(sim) == 2
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sim), base_url="http://ollama"
    ) as http:
        await http.post("/api/pull", json={"model": "phi3:mini", "stream": False})
    assert await inventory.has_model(
        "phi3:mini"
    )  # pulled since the last poll: found by the re-poll
    assert polls(sim) == 3


async def test_concurrent_misses_share_one_poll(
    inventory: PollingModelInventory, sim: SimulatedOllama
) -> None:
    await inventory.refresh()
    answers = await asyncio.gather(*(inventory.has_model(f"nope-{i}") for i in range(10)))
    assert answers == [False] * 10
    assert polls(sim) == 2


async def test_an_unreachable_target_degrades_and_keeps_the_last_copy(
    inventory: PollingModelInventory, sim: SimulatedOllama
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sim), base_url="http://ollama"
    ) as http:
        await http.post("/api/chat", json={"model": "gemma3:1b", "messages": []})
    await inventory.refresh()
    before = (inventory.tags(), inventory.ps())
    sim.down()
    await inventory.refresh()
    assert inventory.degraded
    assert (inventory.tags(), inventory.ps()) == before
    assert inventory.resident() == ["gemma3:1b"]
    assert await inventory.has_model("llama3.2")  # the kept copy still answers
    sim.up()
    await inventory.refresh()
    assert not inventory.degraded


async def test_a_stopped_server_degrades_then_a_restarted_one_recovers() -> None:
    sim = SimulatedOllama()
    async with serve_simulator(sim) as running:
        port = running.port
    async with AiohttpTransport() as transport:
        target = OllamaTarget(transport, f"http://127.0.0.1:{port}")
        stranded = PollingModelInventory(target, interval=30)
        await stranded.refresh()
        assert stranded.degraded and stranded.tags() == {"models": []}
        async with serve_simulator(sim, port=port):
            await stranded.refresh()
        assert not stranded.degraded
        assert stranded.tags() == sim.library.tags()


async def test_while_degraded_the_target_is_polled_every_degraded_interval() -> None:
    sim = SimulatedOllama()
    async with AiohttpTransport() as transport:
        async with serve_simulator(sim) as running:
            port = running.port
            target = OllamaTarget(transport, f"http://127.0.0.1:{port}")
            inventory = PollingModelInventory(target, interval=3600, degraded_interval=0.01)
            poller = asyncio.ensure_future(inventory.run())
            await until(lambda: bool(inventory.tags()["models"]))
        try:
            await inventory.refresh()  # as the worker does when a job finds the target gone
            assert inventory.degraded
            async with serve_simulator(sim, port=port):
                # The poller is an hour from its next regular poll: only the degraded interval
                # brings one.
                await until(lambda: not inventory.degraded)
            assert polls(sim) >= 2
        finally:
            poller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poller


async def test_http_errors_degrade_too() -> None:
    async def broken(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"boom"})

    async with httpx.ASGITransport(app=broken) as transport:
        failing = PollingModelInventory(OllamaTarget(transport, "http://ollama"), interval=30)
        await failing.refresh()
    assert failing.degraded


async def test_null_models_become_an_empty_list() -> None:
    def null_models(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"models": None}).encode())

    async with httpx.MockTransport(null_models) as transport:
        inventory = PollingModelInventory(OllamaTarget(transport, "http://ollama"), interval=30)
        await inventory.refresh()
    assert inventory.tags() == {"models": []} and inventory.ps() == {"models": []}
    assert not inventory.degraded


async def test_run_polls_every_interval_until_cancelled(sim: SimulatedOllama) -> None:
    async with httpx.ASGITransport(app=sim) as transport:
        inventory = PollingModelInventory(OllamaTarget(transport, "http://ollama"), interval=0.001)
        task = asyncio.ensure_future(inventory.run())
        await sim.wait_for(lambda: polls(sim) >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sim.requests["/api/ps"] >= 3
    assert [m["name"] for m in inventory.tags()["models"]] == [m.name for m in DEFAULT_MODELS]


async def test_a_target_that_never_answers_degrades_after_the_poll_timeout() -> None:
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, AiohttpTransport() as transport:
        target = OllamaTarget(transport, f"http://127.0.0.1:{port}")
        inventory = PollingModelInventory(target, interval=60, poll_timeout=0.2)
        await inventory.refresh()
        assert accepted.is_set()
        assert inventory.degraded
        assert inventory.tags() == {"models": []}
        assert await inventory.has_model("llama3.2") is False
        for writer in held:
            writer.close()
