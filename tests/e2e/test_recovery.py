"""Crash recovery end to end: `foreman serve` killed with SIGKILL while it runs async jobs, then
started again on the same database. No job is lost and none runs to completion twice.

Each kill happens while one request waits at the simulator's hold gate, so the worker has
stored everything before it (it dispatches one job at a time) and the kill lands mid-job. How far
the work gets between kills is counted out by the gate (`release(count=n)`), never timed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from e2e_processes import ForemanServer, JobsApi, SimulatorProcess

from foreman_adapters.simulator import SimulatedOllama

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ForemanServer]

LLAMA, QWEN = "llama3.2", "qwen2.5:0.5b"
TIMEOUT = 30.0


def chat_body(model: str, prompt: str) -> dict[str, Any]:
    """An Ollama chat request with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def outcomes(simulator: SimulatorProcess, prompt: str) -> list[str]:
    """The outcomes of the simulator's generations for `prompt`, in order."""
    return [g["outcome"] for g in simulator.stats()["generations"] if g["prompt"] == prompt]


def done_count(stats: dict[str, Any]) -> int:
    """How many generations ran to the end."""
    return sum(1 for g in stats["generations"] if g["outcome"] == "done")


def let_through_until(simulator: SimulatorProcess, generations: int) -> None:
    """Let requests pass the hold gate one at a time (a job may load its model first) until
    `generations` have run to the end and the next request waits at the gate."""
    stats = simulator.stats()
    while done_count(stats) < generations:
        simulator.release(count=1)
        stats = simulator.wait_for(lambda s: s["passes"] == 0 and s["held"] == 1, TIMEOUT)


def kill_while_held(server: ForemanServer, simulator: SimulatorProcess) -> None:
    """SIGKILL foreman while its request waits at the hold gate; the target stays held."""
    server.kill()
    # The dead server's connection drops; the held request ends without an answer.
    simulator.wait_for(lambda stats: stats["held"] == 0 and stats["inflight_generate"] == 0)


def test_an_async_job_interrupted_by_kill_9_completes_after_a_restart(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    warm = jobs.submit(chat_body(LLAMA, "warm"))  # resident: the held request is the generation
    assert jobs.wait_for_state(warm)["state"] == "done"
    simulator.hold()
    job_id = jobs.submit(chat_body(LLAMA, "survivor"))
    simulator.wait_for(lambda stats: stats["held"] == 1)
    assert jobs.get(job_id)["state"] == "working"

    server.kill()
    simulator.wait_for(lambda stats: stats["aborted"] == 1)
    simulator.release()
    server.restart()

    job = jobs.wait_for_state(job_id, timeout=TIMEOUT)
    assert (job["state"], job["attempts"]) == ("done", 2)
    assert job["result"]["message"]["content"] == SimulatedOllama().reply(LLAMA, "survivor")
    assert outcomes(simulator, "survivor") == ["aborted", "done"]


@pytest.mark.slow
def test_async_jobs_survive_repeated_kills_and_none_completes_twice(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    rng = random.Random(20260427)
    # A job may be interrupted by more than one kill; it must not run out of attempts here.
    server = foreman_server(env={"FOREMAN_MAX_ATTEMPTS": "10"})
    jobs = JobsApi(server.url)
    simulator.configure(token_delay=0.02, tokens=4)
    simulator.hold()
    submitted = {
        jobs.submit(chat_body(model, prompt)): (model, prompt)
        for model, prompt in ((rng.choice((LLAMA, QWEN)), f"job {n}") for n in range(20))
    }
    kills_after = sorted(rng.sample(range(1, 15), 3))  # completed generations before each kill

    for threshold in kills_after:
        let_through_until(simulator, threshold)
        kill_while_held(server, simulator)
        server.restart()
    simulator.release()

    finished = {job_id: jobs.wait_for_state(job_id, timeout=TIMEOUT) for job_id in submitted}
    assert {job["state"] for job in finished.values()} == {"done"}
    expected = SimulatedOllama(tokens=4)
    for job_id, (model, prompt) in submitted.items():
        assert finished[job_id]["result"]["message"]["content"] == expected.reply(model, prompt)
    done = Counter(g["prompt"] for g in simulator.stats()["generations"] if g["outcome"] == "done")
    assert done == Counter(prompt for _, prompt in submitted.values())
    # Every kill interrupted exactly one dispatched job, and that cost it one attempt.
    assert sum(job["attempts"] for job in finished.values()) == len(submitted) + len(kills_after)
    assert jobs.list("queued") == []
