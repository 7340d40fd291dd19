"""The async job API end to end: a real `foreman serve` in front of the simulator process, driven
over raw HTTP (and once through foreman's own client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_processes import ForemanServer, SimulatorProcess, wait_until

from foreman_adapters.simulator import SimulatedOllama
from foreman_app.client import ForemanClient

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ForemanServer]

TOKENS = 8
"""Tokens per reply of the fixture's simulator (FAST_SIMULATOR)."""
INLINE_LIMIT = 262_144
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"

EXPECTED = SimulatedOllama(tokens=TOKENS)
"""A simulator of our own, only to compute the deterministic replies the process will give."""


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A POST /jobs body for a one-message chat."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def error_of(response: httpx.Response) -> str:
    """The message of a foreman error, after checking the error's shape."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    return body["error"]


@pytest.fixture
def http(foreman_server: StartServer) -> Iterator[httpx.Client]:
    """A client of a fresh server with default settings."""
    server = foreman_server()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def shared_http(shared_server: ForemanServer) -> Iterator[httpx.Client]:
    """A client of the server that tests share (conftest's `shared_server`)."""
    with httpx.Client(base_url=shared_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One server per xdist worker, for requests that must leave no job behind (session-scoped:
    a worker runs these tests among others', and must not start it again for each run of them)."""
    directory: Path = tmp_path_factory.mktemp("untouched")
    simulator = SimulatorProcess(directory / "simulator.log")
    server = ForemanServer(
        {
            "FOREMAN_OLLAMA_URL": simulator.url,
            "FOREMAN_DB_PATH": str(directory / "foreman.db"),
        },
        directory / "foreman.log",
    )
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
            assert client.get("/jobs").json()["jobs"] == []
    finally:
        if server.running:
            server.stop()
        simulator.kill()


def submit(http: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    """POST /jobs, check the 202 and its Location, return the job id."""
    response = http.post("/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert len(job_id) == 26
    assert response.headers["location"] == f"/jobs/{job_id}"
    return job_id


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET /jobs/{id}."""
    response = http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_state(http: httpx.Client, job_id: str, *states: str, timeout: float = 15) -> dict:
    """Poll the job until it is in one of `states`; the job object."""

    def reached() -> dict[str, Any] | None:
        current = job(http, job_id)
        return current if current["state"] in states else None

    return wait_until(reached, timeout, f"job {job_id} to be {'/'.join(states)}")


def wait_for_held(simulator: SimulatorProcess, count: int = 1) -> None:
    """Until `count` requests wait at the simulator's hold gate."""
    simulator.wait_for(lambda stats: stats["held"] >= count)


def warm(http: httpx.Client, model: str = "llama3.2") -> None:
    """Run one job so that `model` is resident: the next job for it goes straight to working."""
    wait_for_state(http, submit(http, chat(model, "warm up")), "done")


# -- running jobs --------------------------------------------------------------------------------


def test_a_chat_job_runs_to_done_with_the_targets_answer(shared_http: httpx.Client) -> None:
    job_id = submit(shared_http, chat("llama3.2", "Why is the sky blue?", stream=True))
    done = wait_for_state(shared_http, job_id, "done", "failed")
    expected = EXPECTED.reply("llama3.2", "Why is the sky blue?")
    assert done["state"] == "done", done
    assert (done["job_id"], done["kind"], done["model"]) == (job_id, "chat", "llama3.2:latest")
    assert (done["priority"], done["attempts"], done["queue_position"], done["error"]) == (
        0,
        1,
        None,
        None,
    )
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["finished_at"].endswith("Z")
    # `stream: true` is ignored: the result is the target's one complete object.
    assert done["result"]["done"] is True
    assert done["result"]["message"] == {"role": "assistant", "content": expected}
    assert done["result"]["eval_count"] == TOKENS
    assert done["artifacts"] == [
        {
            "name": "completion",
            "content_type": "text/plain; charset=utf-8",
            "size": len(expected.encode()),
            "data": expected,
        }
    ]
    raw = shared_http.get(f"/jobs/{job_id}/artifacts/completion")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.text == expected


def test_generate_jobs_and_a_thinking_model_keep_their_thinking(shared_http: httpx.Client) -> None:
    plain = submit(shared_http, {"kind": "generate", "model": "qwen2.5:0.5b", "prompt": "Count."})
    thinker = submit(shared_http, {"kind": "generate", "model": "qwen3:0.6b", "prompt": "Think."})
    done = wait_for_state(shared_http, plain, "done", "failed")
    assert (done["state"], done["kind"]) == ("done", "generate")
    assert done["result"]["response"] == EXPECTED.reply("qwen2.5:0.5b", "Count.")
    assert [a["name"] for a in done["artifacts"]] == ["completion"]
    thought = wait_for_state(shared_http, thinker, "done", "failed")
    artifacts = {a["name"]: a["data"] for a in thought["artifacts"]}
    assert artifacts == {
        "completion": EXPECTED.reply("qwen3:0.6b", "Think."),
        "thinking": EXPECTED.thinking("qwen3:0.6b", "Think."),
    }
    assert thought["result"]["thinking"] == artifacts["thinking"]


def test_a_reply_over_256_kib_is_served_by_url(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    simulator.configure(tokens=60_000)
    expected = EXPECTED.reply("llama3.2", "Tell me everything.", tokens=60_000).encode()
    assert len(expected) > INLINE_LIMIT
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = submit(http, chat("llama3.2", "Tell me everything."))
        done = wait_for_state(http, job_id, "done", "failed")
        (completion,) = done["artifacts"]
        url = f"{server.url}/jobs/{job_id}/artifacts/completion"
        assert completion == {
            "name": "completion",
            "content_type": "text/plain; charset=utf-8",
            "size": len(expected),
            "url": url,
        }
        fetched = http.get(url)
    assert fetched.status_code == 200
    assert fetched.content == expected
    with ForemanClient(server.url) as client:
        view = client.get(job_id)
        assert client.completion(view) == expected.decode()


# -- listing -------------------------------------------------------------------------------------


def test_listing_is_newest_first_pages_by_cursor_and_filters(http: httpx.Client) -> None:
    models = ["llama3.2", "qwen2.5:0.5b", "llama3.2", "qwen2.5:0.5b", "llama3.2"]
    ids = [submit(http, chat(model, f"job {n}")) for n, model in enumerate(models)]
    for job_id in ids:
        wait_for_state(http, job_id, "done")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = http.get("/jobs", params=params).json()
        pages += 1
        assert len(page["jobs"]) <= 2
        seen += [item["job_id"] for item in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3
    item = http.get("/jobs", params={"limit": 1}).json()["jobs"][0]
    assert item["job_id"] == ids[-1]
    assert set(item) >= {"job_id", "kind", "model", "state", "priority", "attempts"}
    assert {"queue_position", "created_at", "started_at", "finished_at", "error"} <= set(item)
    qwen = http.get("/jobs", params={"model": "qwen2.5:0.5b"}).json()
    assert [j["job_id"] for j in qwen["jobs"]] == [ids[3], ids[1]]
    assert qwen["next_cursor"] is None
    untagged = http.get("/jobs", params={"model": "llama3.2", "state": "done"}).json()
    assert [j["job_id"] for j in untagged["jobs"]] == [ids[4], ids[2], ids[0]]
    assert http.get("/jobs", params={"state": "queued"}).json() == {
        "jobs": [],
        "next_cursor": None,
    }


def test_queue_shows_the_running_job_and_what_waits_in_order(
    http: httpx.Client, simulator: SimulatorProcess
) -> None:
    warm(http)
    simulator.hold()
    running = submit(http, chat("llama3.2", "hold me"))
    wait_for_held(simulator)
    later = submit(http, chat("qwen2.5:0.5b", "later"))
    urgent = submit(http, chat("llama3.2", "urgent", priority=5))
    also = submit(http, chat("qwen2.5:0.5b", "also later"))
    assert job(http, running)["state"] == "working"
    positions = {job_id: job(http, job_id)["queue_position"] for job_id in (urgent, later, also)}
    assert positions == {urgent: 0, later: 1, also: 2}
    queue = http.get("/queue").json()
    assert queue["resident"][0] == "llama3.2:latest"
    assert queue["running"]["job_id"] == running
    assert queue["running"]["state"] == "working"
    assert sorted((g["model"], g["priority"], g["count"]) for g in queue["queued"]) == [
        ("llama3.2:latest", 5, 1),
        ("qwen2.5:0.5b", 0, 2),
    ]
    assert queue["queued_total"] == 3
    assert queue["oldest_queued_age_seconds"] >= 0
    listed = http.get("/jobs", params={"state": "queued"}).json()["jobs"]
    assert {item["job_id"]: item["queue_position"] for item in listed} == positions
    simulator.release()
    for job_id in (running, urgent, later, also):
        assert wait_for_state(http, job_id, "done", "failed")["state"] == "done"
    idle = http.get("/queue").json()
    assert (idle["running"], idle["queued"], idle["queued_total"]) == (None, [], 0)
    assert idle["oldest_queued_age_seconds"] is None


# -- cancelling ----------------------------------------------------------------------------------


def test_a_cancelled_queued_job_never_reaches_the_target(
    http: httpx.Client, simulator: SimulatorProcess
) -> None:
    warm(http)
    simulator.hold()
    running = submit(http, chat("llama3.2", "occupy the worker"))
    wait_for_held(simulator)
    waiting = submit(http, chat("qwen2.5:0.5b", "never runs"))
    assert job(http, waiting)["queue_position"] == 0
    cancelled = http.delete(f"/jobs/{waiting}")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["job_id"], body["state"], body["attempts"]) == (waiting, "cancelled", 0)
    assert body["queue_position"] is None
    assert body["finished_at"] is not None
    simulator.release()
    assert wait_for_state(http, running, "done", "failed")["state"] == "done"
    assert job(http, waiting)["state"] == "cancelled"
    queue = http.get("/queue").json()
    assert (queue["running"], queue["queued_total"]) == (None, 0)
    models = [g["model"] for g in simulator.stats()["generations"]]
    assert "qwen2.5:0.5b" not in models
    again = http.delete(f"/jobs/{waiting}")
    assert (again.status_code, error_of(again)) == (409, "job already finished")


def test_cancelling_a_running_job_aborts_the_generation(
    http: httpx.Client, simulator: SimulatorProcess
) -> None:
    warm(http)
    simulator.hold()
    running = submit(http, chat("llama3.2", "abort me"))
    wait_for_held(simulator)
    assert job(http, running)["state"] == "working"
    cancelled = http.delete(f"/jobs/{running}")
    assert cancelled.status_code == 200
    assert (cancelled.json()["state"], cancelled.json()["attempts"]) == ("cancelled", 1)
    stats = simulator.wait_for(lambda s: s["aborted"] >= 1)
    assert stats["generations"][-1]["outcome"] == "aborted"
    simulator.release()
    # The worker is free again: the next job runs.
    after = submit(http, chat("llama3.2", "next"))
    assert wait_for_state(http, after, "done", "failed")["state"] == "done"
    assert job(http, running)["state"] == "cancelled"
    finished = http.delete(f"/jobs/{after}")
    assert (finished.status_code, error_of(finished)) == (409, "job already finished")


# -- idempotency ---------------------------------------------------------------------------------


def test_an_idempotency_key_returns_the_original_job(
    http: httpx.Client, simulator: SimulatorProcess
) -> None:
    body = chat("llama3.2", "only once")
    first = submit(http, body, **{"Idempotency-Key": "order-42"})
    wait_for_state(http, first, "done")
    again = submit(http, body, **{"Idempotency-Key": "order-42"})
    assert again == first
    changed = http.post(
        "/jobs", json=chat("llama3.2", "twice?"), headers={"Idempotency-Key": "order-42"}
    )
    assert changed.status_code == 422
    assert "order-42" in error_of(changed)
    other_key = submit(http, body, **{"Idempotency-Key": "order-43"})
    assert other_key != first
    listed = [item["job_id"] for item in http.get("/jobs").json()["jobs"]]
    assert listed.count(first) == 1
    assert len(listed) == 2
    too_long = http.post("/jobs", json=body, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400
    assert "Idempotency-Key" in error_of(too_long)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"model": "llama3.2", "messages": [', "invalid JSON"),
        (b'{"model": "llama3.2", "prompt": "\xff"}', "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b"", "missing request body"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": ""}', "model"),
        (b'{"model": 7}', "model"),
        (b'{"model": "llama3.2", "priority": true}', "priority"),
        (b'{"model": "llama3.2", "priority": 1.5}', "priority"),
        (b'{"model": "llama3.2", "priority": 1001}', "priority"),
        (b'{"model": "llama3.2", "priority": "high"}', "priority"),
        (b'{"model": "llama3.2", "kind": "embed"}', "kind"),
        (b'{"model": "llama3.2", "messages": {"role": "user"}}', "messages"),
        (b'{"model": "llama3.2", "messages": [{"role": 1}]}', "messages[0].role"),
        (b'{"model": "llama3.2", "options": [1]}', "options"),
        (b'{"model": "llama3.2", "kind": "generate", "prompt": 3}', "prompt"),
        (b'{"model": "llama3.2", "state_webhook_url": "ftp://x/y"}', "state_webhook_url"),
        (b'{"model": "llama3.2", "state_webhook_url": "not a url"}', "state_webhook_url"),
        (b'{"model": "llama3.2", "state_webhook_url": 5}', "state_webhook_url"),
    ],
)
def test_bad_submissions_are_400_naming_the_field(
    untouched: httpx.Client, body: bytes, names: str
) -> None:
    response = untouched.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert names in error_of(response)
    assert untouched.get("/jobs").json()["jobs"] == []


def test_not_found_errors(shared_http: httpx.Client) -> None:
    unknown_model = shared_http.post("/jobs", json=chat("nope", "hi"))
    assert (unknown_model.status_code, error_of(unknown_model)) == (404, "model 'nope' not found")
    missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    for response in (shared_http.get(f"/jobs/{missing}"), shared_http.delete(f"/jobs/{missing}")):
        assert (response.status_code, error_of(response)) == (404, "job not found")
    no_job = shared_http.get(f"/jobs/{missing}/artifacts/completion")
    assert (no_job.status_code, error_of(no_job)) == (404, "job not found")
    done = wait_for_state(shared_http, submit(shared_http, chat("llama3.2", "hi")), "done")
    no_artifact = shared_http.get(f"/jobs/{done['job_id']}/artifacts/thinking")
    assert (no_artifact.status_code, error_of(no_artifact)) == (404, "artifact not found")


@pytest.mark.parametrize(
    "query",
    [
        {"state": "sleeping"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-5"},
        {"cursor": "not-a-cursor"},
    ],
)
def test_bad_listing_queries_are_400(untouched: httpx.Client, query: dict[str, str]) -> None:
    response = untouched.get("/jobs", params=query)
    assert response.status_code == 400
    assert next(iter(query)) in error_of(response)


def test_a_webhook_host_outside_the_allowed_list_is_refused(foreman_server: StartServer) -> None:
    server = foreman_server({"FOREMAN_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com"})
    refused = httpx.post(
        f"{server.url}/jobs",
        json=chat("llama3.2", "hi", state_webhook_url="http://127.0.0.1:9/hook"),
    )
    assert refused.status_code == 400
    assert "state_webhook_url" in error_of(refused)
    assert "FOREMAN_WEBHOOK_ALLOWED_HOSTS" in error_of(refused)
    assert httpx.get(f"{server.url}/jobs").json()["jobs"] == []


def test_a_full_queue_is_503_with_retry_after(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server({"FOREMAN_MAX_QUEUE": "1"})
    simulator.hold()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        running = submit(http, chat("llama3.2", "running"))
        wait_for_held(simulator)
        keyed_body = chat("llama3.2", "queued")
        queued = submit(http, keyed_body, **{"Idempotency-Key": "k1"})
        refused = http.post("/jobs", json=chat("llama3.2", "one too many"))
        assert refused.status_code == 503
        assert error_of(refused) == QUEUE_FULL
        assert int(refused.headers["retry-after"]) >= 1
        # A retried submission of the job that got in still gets its id, full queue or not.
        assert submit(http, keyed_body, **{"Idempotency-Key": "k1"}) == queued
        simulator.release()
        for job_id in (running, queued):
            assert wait_for_state(http, job_id, "done")["state"] == "done"
        assert len(http.get("/jobs").json()["jobs"]) == 2
