"""Queued inference end to end: `POST /api/chat` and `/api/generate` through the durable queue and
the single worker of a real `foreman serve`, in front of the simulated Ollama in its own process.

Order and concurrency are read from the simulator's generations log and counters; progress is
steered with its hold gate, never with sleeps.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import pytest
from e2e_processes import ForemanServer, JobsApi, SimulatorProcess, wait_until
from langchain_ollama import ChatOllama

from foreman_adapters.simulator import SimulatedOllama

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ForemanServer]

TOKENS = 8
"""Reply length of the e2e simulator (FAST_SIMULATOR)."""
EXPECTED = SimulatedOllama(tokens=TOKENS)
"""An in-process twin of the simulator process: the same deterministic replies."""

LLAMA, QWEN, GEMMA = "llama3.2", "qwen2.5:0.5b", "gemma3:1b"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
JOB_ID = "X-Foreman-Job-Id"
TIMEOUT = 30.0
SLOW_TOKEN = 20.0
"""Seconds per token for generations a client leaves: far longer than leaving takes, however
busy the machine, so the generation is surely still running (the disconnect cuts it short)."""


def reply(model: str, prompt: str, tokens: int = TOKENS) -> str:
    """What the simulator answers `prompt` with."""
    return EXPECTED.reply(model, prompt, tokens)


def user(content: str) -> dict[str, str]:
    """A user message."""
    return {"role": "user", "content": content}


def chat_body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """An Ollama chat request with one user message."""
    return {"model": model, "messages": [user(prompt)], **extra}


def sync_chat(url: str, model: str, prompt: str) -> str:
    """One non-streamed chat through the official client; the reply's content."""
    answer = ollama.Client(host=url, timeout=TIMEOUT).chat(
        model=model, messages=[user(prompt)], stream=False
    )
    return answer.message.content or ""


def generations(simulator: SimulatorProcess) -> list[tuple[str, str]]:
    """(prompt, outcome) of every generation the simulator ran, in order."""
    return [(g["prompt"], g["outcome"]) for g in simulator.stats()["generations"]]


def done_prompts(simulator: SimulatorProcess) -> list[str]:
    """Prompts of the generations that ran to the end, in the order they ended."""
    return [prompt for prompt, outcome in generations(simulator) if outcome == "done"]


def held(count: int) -> Callable[[dict[str, Any]], bool]:
    """A simulator-stats predicate: `count` requests wait at the hold gate."""
    return lambda stats: stats["held"] == count


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that block until the simulator is released."""
    with ThreadPoolExecutor(max_workers=12) as executor:
        yield executor


# -- clients ---------------------------------------------------------------------------------


def test_ollama_client_chats_and_generates_streamed_and_whole(
    shared_server: ForemanServer,
) -> None:
    client = ollama.Client(host=shared_server.url, timeout=TIMEOUT)

    whole = client.chat(model=LLAMA, messages=[user("whole chat")], stream=False)
    assert whole.message.content == reply(LLAMA, "whole chat")
    assert (whole.model, whole.done, whole.done_reason) == (LLAMA, True, "stop")

    parts = list(client.chat(model=LLAMA, messages=[user("streamed chat")], stream=True))
    assert "".join(part.message.content or "" for part in parts) == reply(LLAMA, "streamed chat")
    assert [part.done for part in parts] == [False] * TOKENS + [True]

    generated = client.generate(model=QWEN, prompt="whole generate", stream=False)
    assert generated.response == reply(QWEN, "whole generate")
    assert generated.context

    pieces = list(client.generate(model=QWEN, prompt="streamed generate", stream=True))
    assert "".join(piece.response for piece in pieces) == reply(QWEN, "streamed generate")
    assert [piece.done for piece in pieces] == [False] * TOKENS + [True]


def test_langchain_chat_ollama_invokes_and_streams(shared_server: ForemanServer) -> None:
    llm = ChatOllama(model=LLAMA, base_url=shared_server.url)
    assert llm.invoke("invoked").content == reply(LLAMA, "invoked")
    streamed = "".join(str(chunk.content) for chunk in llm.stream("streamed"))
    assert streamed == reply(LLAMA, "streamed")


# -- one at a time, in drain-by-model order ---------------------------------------------------


def test_ten_concurrent_chats_all_succeed_one_at_a_time_at_the_target(
    foreman_server: StartServer, simulator: SimulatorProcess, pool: ThreadPoolExecutor
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    simulator.hold()
    prompts = [f"concurrent {n}" for n in range(10)]
    answers = [pool.submit(sync_chat, server.url, LLAMA, prompt) for prompt in prompts]
    simulator.wait_for(held(1))
    jobs.wait_for_queued(9)  # all ten are inside foreman; one of them is at the target
    assert simulator.stats()["inflight_generate"] == 1

    simulator.release()
    assert [answer.result(TIMEOUT) for answer in answers] == [reply(LLAMA, p) for p in prompts]
    assert simulator.stats()["max_inflight_generate"] == 1
    assert sorted(done_prompts(simulator)) == sorted(prompts)


def test_a_backlog_drains_by_model_and_a_sync_request_outranks_it(
    foreman_server: StartServer, simulator: SimulatorProcess, pool: ThreadPoolExecutor
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    simulator.hold()
    running = pool.submit(sync_chat, server.url, LLAMA, "running")
    simulator.wait_for(held(1))
    backlog = [(QWEN if n % 2 == 0 else GEMMA, f"backlog {n}") for n in range(8)]
    ids = [jobs.submit(chat_body(model, prompt)) for model, prompt in backlog]
    urgent = pool.submit(sync_chat, server.url, GEMMA, "urgent")
    jobs.wait_for_queued(len(backlog) + 1)

    simulator.release()
    assert running.result(TIMEOUT) == reply(LLAMA, "running")
    assert urgent.result(TIMEOUT) == reply(GEMMA, "urgent")
    finished = [jobs.wait_for_state(job_id) for job_id in ids]
    assert [(job["state"], job["attempts"]) for job in finished] == [("done", 1)] * len(ids)
    assert [job["result"]["message"]["content"] for job in finished] == [
        reply(model, prompt) for model, prompt in backlog
    ]
    # The urgent request came last but ran first; its model's backlog drained with it.
    by_model = {m: [p for mm, p in backlog if mm == m] for m in (QWEN, GEMMA)}
    assert done_prompts(simulator) == ["running", "urgent", *by_model[GEMMA], *by_model[QWEN]]
    assert simulator.stats()["swaps"] == 3


def test_a_job_waiting_past_max_wait_goes_before_the_resident_models_work(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    max_wait = timedelta(seconds=1)
    server = foreman_server(env={"FOREMAN_MAX_WAIT": "1s"})
    jobs = JobsApi(server.url)
    simulator.hold()
    jobs.submit(chat_body(LLAMA, "resident 0"))
    simulator.wait_for(held(1))
    starving = jobs.submit(chat_body(QWEN, "starving"))
    for n in (1, 2):
        jobs.submit(chat_body(LLAMA, f"resident {n}"))
    created = datetime.fromisoformat(jobs.get(starving)["created_at"])
    wait_until(lambda: datetime.now(UTC) - created > max_wait, 5, "the starvation bound to pass")
    # Fresh work for the resident model keeps arriving; drain-by-model alone would prefer it.
    for n in (3, 4):
        jobs.submit(chat_body(LLAMA, f"resident {n}"))
    jobs.wait_for_queued(5)

    simulator.release()
    wait_until(lambda: len(done_prompts(simulator)) == 6, TIMEOUT, "every job to run")
    assert done_prompts(simulator) == [
        "resident 0",
        "starving",
        *(f"resident {n}" for n in (1, 2, 3, 4)),
    ]


# -- retries and target errors -----------------------------------------------------------------


@pytest.mark.slow  # retries back off 1 s, then 2 s, twice over
def test_dropped_connections_are_retried_until_the_job_succeeds(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)

    simulator.faults(drop_connections=2)
    job = jobs.wait_for_state(jobs.submit(chat_body(LLAMA, "async retried")))
    assert (job["state"], job["attempts"]) == ("done", 3)
    assert job["result"]["message"]["content"] == reply(LLAMA, "async retried")

    simulator.faults(drop_connections=2)
    response = httpx.post(
        f"{server.url}/api/chat", json=chat_body(LLAMA, "sync retried"), timeout=TIMEOUT
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == reply(LLAMA, "sync retried")
    assert jobs.get(response.headers[JOB_ID])["attempts"] == 3
    assert simulator.stats()["faults"]["drop_connections"] == 0


def test_a_target_400_is_relayed_at_once_and_not_retried(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    sync_chat(server.url, LLAMA, "warm")  # the model is resident: the fault hits the request
    chats_before = simulator.stats()["requests"]["/api/chat"]

    simulator.faults(fail_next={"count": 1, "status": 400, "body": "invalid option foo"})
    response = httpx.post(
        f"{server.url}/api/chat", json=chat_body(LLAMA, "rejected"), timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert response.content == b'{"error":"invalid option foo"}'
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    job = jobs.get(response.headers[JOB_ID])
    assert (job["state"], job["attempts"]) == ("failed", 1)

    simulator.faults(fail_next={"count": 1, "status": 400, "body": "invalid option bar"})
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).generate(model=LLAMA, prompt="rejected too")
    assert (raised.value.status_code, raised.value.error) == (400, "invalid option bar")

    simulator.faults(fail_next={"count": 1, "status": 400, "body": "invalid option baz"})
    job = jobs.wait_for_state(jobs.submit(chat_body(LLAMA, "async rejected")))
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert "invalid option baz" in job["error"]
    stats = simulator.stats()
    assert stats["requests"]["/api/chat"] + stats["requests"]["/api/generate"] == chats_before + 3


def test_a_target_down_longer_than_the_attempts_fails_a_waiting_client_but_queued_work_waits(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server(env={"FOREMAN_MAX_ATTEMPTS": "2"})
    jobs = JobsApi(server.url)

    simulator.faults(drop_connections=100)
    response = httpx.post(
        f"{server.url}/api/chat", json=chat_body(LLAMA, "never answered"), timeout=TIMEOUT
    )
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    assert list(response.json()) == ["error"]
    assert response.json()["error"]
    job = jobs.get(response.headers[JOB_ID])
    assert (job["state"], job["attempts"]) == ("failed", 2)

    simulator.reset()
    simulator.faults(down=True)
    waiting = jobs.submit(chat_body(LLAMA, "async, answered once Ollama is back"))
    # With 2 attempts and a 1 s backoff the job would have failed by now; it waits instead.
    wait_until(
        lambda: "queued jobs wait for it" in server.log(), TIMEOUT, "the worker to hold the queue"
    )
    held = jobs.get(waiting)
    assert (held["state"], held["attempts"] <= 1) == ("queued", True)
    assert httpx.get(f"{server.url}/healthz").json()["degraded"] is True

    simulator.faults(down=False)
    job = jobs.wait_for_state(waiting)
    assert (job["state"], job["attempts"] <= 2) == ("done", True)
    assert sync_chat(server.url, LLAMA, "back up") == reply(LLAMA, "back up")
    assert jobs.list("queued") == []
    assert [j for j in jobs.list() if j["state"] in ("loading", "working")] == []


def test_a_failure_after_streaming_began_ends_the_stream_with_one_error_line(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    simulator.faults(fail_mid_stream={"count": 1, "after_chunks": 2})
    response = httpx.post(
        f"{server.url}/api/chat", json=chat_body(LLAMA, "broken"), timeout=TIMEOUT
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.content.split(b"\n") if line]
    assert [line["done"] for line in lines[:2]] == [False, False]
    assert list(lines[2]) == ["error"]
    assert len(lines) == 3
    job = JobsApi(server.url).get(response.headers[JOB_ID])
    assert (job["state"], job["attempts"]) == ("failed", 1)


# -- live relay and clients that leave ----------------------------------------------------------


def test_streamed_chunks_reach_the_client_while_the_generation_runs(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    simulator.configure(ttft=0.05, token_delay=0.3, tokens=6)
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json=chat_body(LLAMA, "live"), timeout=TIMEOUT
    ) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.iter_lines()
        first = json.loads(next(lines))
        # The first chunk is here while the target is still producing the rest.
        during = simulator.stats()
        rest = [json.loads(line) for line in lines]
    assert (during["inflight_generate"], during["generations"]) == (1, [])
    assert not first["done"]
    chunks = [first, *rest]
    assert "".join(c["message"]["content"] for c in chunks) == reply(LLAMA, "live", 6)
    assert [c["done"] for c in chunks] == [False] * 6 + [True]


def _raw_post(path: str, body: dict[str, Any], host: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def test_a_client_that_leaves_while_queued_cancels_its_job_before_it_runs(
    foreman_server: StartServer, simulator: SimulatorProcess, pool: ThreadPoolExecutor
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    simulator.hold()
    first = pool.submit(sync_chat, server.url, LLAMA, "first")
    simulator.wait_for(held(1))
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=TIMEOUT) as client:
        client.sendall(_raw_post("/api/chat", chat_body(LLAMA, "abandoned"), address.netloc))
        [abandoned] = jobs.wait_for_queued(1)
    assert jobs.wait_for_state(abandoned["job_id"])["state"] == "cancelled"

    simulator.release()
    assert first.result(TIMEOUT) == reply(LLAMA, "first")
    assert sync_chat(server.url, LLAMA, "after") == reply(LLAMA, "after")
    assert generations(simulator) == [("first", "done"), ("after", "done")]


def test_a_client_that_leaves_mid_stream_aborts_the_upstream_request(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    simulator.configure(token_delay=SLOW_TOKEN, tokens=6)  # the client leaves long before the end
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json=chat_body(LLAMA, "left"), timeout=TIMEOUT
    ) as response:
        job_id = response.headers[JOB_ID]
        assert not json.loads(next(response.iter_lines()))["done"]
    # Leaving the block closed the connection after one chunk.
    simulator.wait_for(lambda stats: stats["aborted"] == 1)
    assert jobs.wait_for_state(job_id)["state"] == "cancelled"
    assert generations(simulator) == [("left", "aborted")]
    simulator.configure(token_delay=0)
    assert sync_chat(server.url, LLAMA, "next") == reply(LLAMA, "next", 6)


def test_a_client_that_leaves_a_whole_reply_mid_generation_aborts_the_upstream_request(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    assert sync_chat(server.url, LLAMA, "warm") == reply(LLAMA, "warm")
    simulator.configure(token_delay=SLOW_TOKEN, tokens=6)  # the client leaves long before the end
    address = urlsplit(server.url)
    body = chat_body(LLAMA, "left whole", stream=False)
    with socket.create_connection((address.hostname, address.port), timeout=TIMEOUT) as client:
        client.sendall(_raw_post("/api/chat", body, address.netloc))
        simulator.wait_for(lambda stats: stats["inflight_generate"] == 1)
    simulator.wait_for(lambda stats: stats["aborted"] == 1)
    newest = jobs.list()[0]
    assert jobs.wait_for_state(newest["job_id"])["state"] == "cancelled"
    assert generations(simulator) == [("warm", "done"), ("left whole", "aborted")]


# -- backpressure ---------------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_ollamas_text_and_retry_after(
    foreman_server: StartServer, simulator: SimulatorProcess, pool: ThreadPoolExecutor
) -> None:
    server = foreman_server(env={"FOREMAN_MAX_QUEUE": "1"})
    jobs = JobsApi(server.url)
    simulator.hold()
    first = pool.submit(sync_chat, server.url, LLAMA, "first")
    simulator.wait_for(held(1))
    second = pool.submit(sync_chat, server.url, LLAMA, "second")
    jobs.wait_for_queued(1)

    refused = httpx.post(f"{server.url}/api/chat", json=chat_body(LLAMA, "refused"), timeout=10)
    assert refused.status_code == 503
    assert refused.content == json.dumps({"error": BUSY}, separators=(",", ":")).encode()
    assert int(refused.headers["Retry-After"]) >= 1
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).generate(model=LLAMA, prompt="refused too")
    assert (raised.value.status_code, raised.value.error) == (503, BUSY)

    simulator.release()
    assert [first.result(TIMEOUT), second.result(TIMEOUT)] == [
        reply(LLAMA, "first"),
        reply(LLAMA, "second"),
    ]
    assert done_prompts(simulator) == ["first", "second"]


# -- the rest of interface.md's queued routes ---------------------------------------------------


def test_responses_carry_the_job_id_and_the_model_as_the_client_sent_it(
    shared_server: ForemanServer,
) -> None:
    server = shared_server
    jobs = JobsApi(server.url)
    for model, stream in ((LLAMA, True), (f"{LLAMA}:latest", False)):
        response = httpx.post(
            f"{server.url}/api/generate",
            json={"model": model, "prompt": "named", "stream": stream},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert {line["model"] for line in lines} == {model}
        job = jobs.get(response.headers[JOB_ID])
        assert (job["state"], job["model"], job["kind"]) == ("done", "llama3.2:latest", "generate")


def test_a_load_request_with_no_messages_passes_through(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    response = httpx.post(
        f"{server.url}/api/chat", json={"model": GEMMA, "messages": []}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["model"], answer["done"], answer["done_reason"]) == (GEMMA, True, "load")
    assert answer["message"] == {"role": "assistant", "content": ""}
    stats = simulator.stats()
    assert (stats["resident"], stats["swaps"], stats["generations"]) == ("gemma3:1b", 1, [])
    assert JOB_ID.lower() in response.headers


def test_an_unknown_model_is_ollamas_404_and_never_queued(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    for route in ("chat", "generate"):
        response = httpx.post(
            f"{server.url}/api/{route}", json={"model": "nope", "prompt": "x"}, timeout=10
        )
        assert (response.status_code, response.json()) == (404, {"error": "model 'nope' not found"})
    assert JobsApi(server.url).list() == []
    assert "/api/chat" not in simulator.stats()["requests"]


def test_a_name_without_a_tag_is_the_latest_tag_for_scheduling(
    foreman_server: StartServer, simulator: SimulatorProcess, pool: ThreadPoolExecutor
) -> None:
    server = foreman_server()
    jobs = JobsApi(server.url)
    simulator.hold()
    running = pool.submit(sync_chat, server.url, GEMMA, "running")
    simulator.wait_for(held(1))
    bare = jobs.submit(chat_body(LLAMA, "bare"))
    jobs.submit(chat_body(QWEN, "other"))
    tagged = jobs.submit(chat_body(f"{LLAMA}:latest", "tagged"))

    simulator.release()
    assert running.result(TIMEOUT) == reply(GEMMA, "running")
    for job_id in (bare, tagged):
        assert jobs.wait_for_state(job_id)["model"] == "llama3.2:latest"
    wait_until(lambda: len(done_prompts(simulator)) == 4, TIMEOUT, "every job to run")
    # Once llama3.2 is loaded for "bare", "tagged" is the resident model's work and goes next.
    assert done_prompts(simulator) == ["running", "bare", "tagged", "other"]
    assert simulator.stats()["swaps"] == 3
