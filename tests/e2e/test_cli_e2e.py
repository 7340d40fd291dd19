"""The `foreman` CLI against a real `foreman serve` in front of the simulator."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from e2e_processes import ForemanServer, JobsApi, SimulatorProcess, free_port

from foreman_adapters.simulator import SimulatedOllama

pytestmark = pytest.mark.e2e

Cli = Callable[..., subprocess.CompletedProcess[str]]
EXPECTED = SimulatedOllama(tokens=8)


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (and proof there is no traceback)."""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.fixture
def server(foreman_server: Callable[..., ForemanServer]) -> ForemanServer:
    return foreman_server()


def test_submit_wait_prints_the_completion(shared_server: ForemanServer, foreman_cli: Cli) -> None:
    run = foreman_cli(
        "submit", "-m", "llama3.2", "--wait", "hello", env={"FOREMAN_URL": shared_server.url}
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == EXPECTED.reply("llama3.2", "hello", 8)


def test_submit_reads_the_prompt_from_stdin(shared_server: ForemanServer, foreman_cli: Cli) -> None:
    env = {"FOREMAN_URL": shared_server.url}
    run = foreman_cli("submit", "-m", "gemma3:1b", "--wait", "-", env=env, input="piped")

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == EXPECTED.reply("gemma3:1b", "piped", 8)


def test_submitted_jobs_show_in_job_and_jobs_as_json(
    server: ForemanServer, foreman_cli: Cli
) -> None:
    env = {"FOREMAN_URL": server.url}
    submitted = foreman_cli("submit", "-m", "llama3.2", "--json", "--priority", "3", "x", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    JobsApi(server.url).wait_for_state(job_id, ("done",))

    one = foreman_cli("job", job_id, "--json", env=env)
    listing = foreman_cli("jobs", "--json", "--model", "llama3.2", env=env)

    assert one.returncode == 0, one.stderr
    job: dict[str, Any] = json.loads(one.stdout)
    assert (job["job_id"], job["state"], job["priority"]) == (job_id, "done", 3)
    assert listing.returncode == 0, listing.stderr
    assert [j["job_id"] for j in json.loads(listing.stdout)["jobs"]] == [job_id]


def test_cancel_stops_a_queued_job_and_ps_shows_the_queue(
    server: ForemanServer, simulator: SimulatorProcess, foreman_cli: Cli
) -> None:
    env = {"FOREMAN_URL": server.url}
    api = JobsApi(server.url)
    simulator.hold()
    running = api.submit({"model": "llama3.2", "messages": [{"role": "user", "content": "a"}]})
    api.wait_for_state(running, ("loading", "working"))
    waiting = api.submit({"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "b"}]})

    ps = foreman_cli("ps", "--json", env=env)
    cancelled = foreman_cli("cancel", waiting, env=env)
    simulator.release()

    assert ps.returncode == 0, ps.stderr
    queue = json.loads(ps.stdout)["queue"]
    assert queue["running"]["job_id"] == running
    assert queue["queued"] == [{"model": "qwen2.5:0.5b", "priority": 0, "count": 1}]
    assert cancelled.returncode == 0, cancelled.stderr
    assert api.get(waiting)["state"] == "cancelled"
    assert api.wait_for_state(running, ("done",))["state"] == "done"
    assert all(g["prompt"] != "b" for g in simulator.stats()["generations"])


def test_a_failed_job_makes_submit_wait_exit_1_with_its_error(
    server: ForemanServer, simulator: SimulatorProcess, foreman_cli: Cli
) -> None:
    simulator.faults(fail_next={"count": 1, "status": 400, "body": '{"error":"bad options"}'})

    run = foreman_cli("submit", "-m", "llama3.2", "--wait", "x", env={"FOREMAN_URL": server.url})

    assert run.returncode == 1
    assert "bad options" in one_line_error(run)


def test_an_unreachable_server_is_one_line_and_exit_1(foreman_cli: Cli) -> None:
    run = foreman_cli("jobs", env={"FOREMAN_URL": f"http://127.0.0.1:{free_port()}"})

    assert run.returncode == 1
    assert "cannot reach foreman" in one_line_error(run)


def test_a_bad_argument_is_one_line_and_exit_2(
    shared_server: ForemanServer, foreman_cli: Cli
) -> None:
    run = foreman_cli("submit", "no model given", env={"FOREMAN_URL": shared_server.url})

    assert run.returncode == 2
    assert "--model" in one_line_error(run) or "-m" in one_line_error(run)
