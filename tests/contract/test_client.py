"""The Python client against a fake of foreman's native routes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from fakes_foreman_api import FakeForemanApi
from foreman_app.client import (
    ApiError,
    AsyncForemanClient,
    BadRequest,
    ClientError,
    Conflict,
    ForemanClient,
    ForemanTimeout,
    JobView,
    NotFound,
    QueueFullError,
    ServerUnreachable,
    Unauthorized,
    base_url,
    submission_body,
    verify_signature,
)
from foreman_core import signing


@pytest.fixture
def fake() -> FakeForemanApi:
    return FakeForemanApi()


@pytest.fixture
def client(fake: FakeForemanApi) -> ForemanClient:
    with ForemanClient("http://foreman.test", transport=fake.transport()) as client:
        yield client


# --- submit -------------------------------------------------------------------------------


def test_submit_sends_a_chat_request_with_system_and_user_messages(fake, client) -> None:
    job_id = client.submit("llama3.2", "Why is the sky blue?", system="Be brief.")

    assert len(job_id) == 26
    assert fake.jobs[job_id].body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "priority": 0,
    }


def test_submit_generate_sends_prompt_system_and_kind(fake, client) -> None:
    job_id = client.submit("qwen3:8b", "Once upon", kind="generate", system="A tale.")

    assert fake.jobs[job_id].body == {
        "model": "qwen3:8b",
        "kind": "generate",
        "prompt": "Once upon",
        "system": "A tale.",
        "priority": 0,
    }


def test_submit_passes_webhook_priority_options_and_ollama_fields(fake, client) -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    job_id = client.submit(
        "llama3.2",
        "and now?",
        messages=history,
        webhook="http://hooks.test/in",
        priority=5,
        options={"temperature": 0},
        format="json",
        keep_alive="5m",
    )

    body = fake.jobs[job_id].body
    assert body["messages"] == [*history, {"role": "user", "content": "and now?"}]
    assert body["state_webhook_url"] == "http://hooks.test/in"
    assert body["priority"] == 5
    assert body["options"] == {"temperature": 0}
    assert (body["format"], body["keep_alive"]) == ("json", "5m")


def test_a_job_needs_a_prompt_or_messages_and_generate_takes_no_messages() -> None:
    with pytest.raises(ValueError, match="prompt or messages"):
        submission_body("llama3.2")
    with pytest.raises(ValueError, match="not messages"):
        submission_body("llama3.2", "x", kind="generate", messages=[])
    with pytest.raises(ValueError, match="kind"):
        submission_body("llama3.2", "x", kind="embed")  # type: ignore[arg-type]


def test_an_idempotency_key_returns_the_same_job_and_a_changed_body_conflicts(fake, client) -> None:
    first = client.submit("llama3.2", "once", idempotency_key="k-1")
    again = client.submit("llama3.2", "once", idempotency_key="k-1")

    assert again == first
    assert len(fake.jobs) == 1
    with pytest.raises(Conflict, match="already used") as caught:
        client.submit("llama3.2", "twice", idempotency_key="k-1")
    assert caught.value.status == 422


def test_an_unknown_model_is_not_found_with_ollamas_message(client) -> None:
    with pytest.raises(NotFound) as caught:
        client.submit("nope", "hi")

    assert caught.value.status == 404
    assert caught.value.message == "model 'nope' not found"


def test_a_full_queue_raises_with_retry_after(fake, client) -> None:
    fake.queue_full = True

    with pytest.raises(QueueFullError) as caught:
        client.submit("llama3.2", "hi")

    assert caught.value.retry_after == 5.0
    assert "maximum pending requests exceeded" in str(caught.value)


def test_a_bad_field_is_a_bad_request_naming_it(client) -> None:
    with pytest.raises(BadRequest, match="priority"):
        client.submit("llama3.2", "hi", priority="high")  # type: ignore[arg-type]


# --- get, wait, cancel, artifacts ----------------------------------------------------------


def test_get_returns_a_typed_view_of_the_job_object(fake, client) -> None:
    job_id = fake.add_job(script=["done"])

    job = client.get(job_id)

    assert isinstance(job, JobView)
    assert (job.job_id, job.kind, job.model, job.state) == (
        job_id,
        "chat",
        "llama3.2:latest",
        "done",
    )
    assert job.finished
    assert job.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert job.finished_at is not None and job.finished_at.tzinfo is not None
    assert [a.name for a in job.artifacts] == ["completion"]
    assert job.completion == "echo: hi"
    assert job.result is not None and job.result["message"]["content"] == "echo: hi"
    assert job.raw["job_id"] == job_id


def test_an_unknown_job_is_not_found_with_the_servers_message(client) -> None:
    with pytest.raises(NotFound, match=r"^job not found$"):
        client.get("01JUNKNOWNUNKNOWNUNKNOWN00")


def test_a_job_id_cannot_reach_another_route(client) -> None:
    with pytest.raises(NotFound, match="job not found"):
        client.get("../queue")
    with pytest.raises(ValueError, match="empty"):
        client.get(" ")


def test_wait_follows_the_job_through_every_state_until_done(fake, client) -> None:
    # Each GET moves the job one step: the first two polls both see it queued.
    fake.next_script = ["queued", "queued", "queued", "loading", "working", "done"]
    job_id = client.submit("llama3.2", "hello")
    seen: list[str] = []

    job = client.wait(job_id, poll_interval=0, on_update=lambda view: seen.append(view.state))

    assert job.state == "done"
    assert job.completion == "echo: hello"
    # The second queued view equals the first, so on_update does not see it twice.
    assert seen == ["queued", "loading", "working", "done"]


def test_wait_returns_a_failed_job_with_its_error(fake, client) -> None:
    fake.next_script = ["queued", "working", "failed"]
    job_id = client.submit("llama3.2", "hello")

    job = client.wait(job_id, poll_interval=0)

    assert (job.state, job.error) == ("failed", fake.failure)
    assert job.completion is None


def test_wait_gives_up_after_its_timeout_with_the_last_view(fake, client) -> None:
    job_id = fake.add_job(script=["queued"])

    with pytest.raises(ForemanTimeout) as caught:
        client.wait(job_id, timeout=0, poll_interval=0)

    assert caught.value.job.state == "queued"
    assert caught.value.job.queue_position == 0
    assert isinstance(caught.value, TimeoutError)
    assert job_id in str(caught.value)


def test_cancel_a_queued_job_and_a_finished_one_conflicts(fake, client) -> None:
    queued = fake.add_job(script=["queued"])
    done = fake.add_job(script=["done"])

    assert client.cancel(queued).state == "cancelled"
    assert client.get(queued).state == "cancelled"
    with pytest.raises(Conflict, match="already done") as caught:
        client.cancel(done)
    assert caught.value.status == 409


def test_artifact_returns_raw_bytes_and_unknown_ones_are_not_found(fake, client) -> None:
    job_id = fake.add_job(prompt="bytes please", script=["done"])
    client.get(job_id)

    assert client.artifact(job_id, "completion") == b"echo: bytes please"
    with pytest.raises(NotFound):
        client.artifact(job_id, "thinking")


def test_completion_fetches_an_artifact_too_large_to_inline() -> None:
    fake = FakeForemanApi(inline_limit=8)
    with ForemanClient("http://foreman.test", transport=fake.transport()) as client:
        job_id = fake.add_job(prompt="a long answer", script=["done"])
        job = client.get(job_id)
        # The listing shape keeps the result; drop it to prove the text comes from the url.
        bare = JobView.from_json({**job.raw, "result": None})

        assert bare.artifacts[0].inline is False
        assert bare.completion is None
        assert client.completion(bare) == "echo: a long answer"


def test_base64_artifacts_are_decoded() -> None:
    job = JobView.from_json(
        {
            "job_id": "x",
            "state": "done",
            "artifacts": [
                {
                    "name": "completion",
                    "content_type": "text/plain",
                    "data": "aMOpbGxv",
                    "encoding": "base64",
                }
            ],
        }
    )

    assert job.completion == "héllo"


# --- listing -------------------------------------------------------------------------------


def test_list_filters_by_state_and_model_newest_first(fake, client) -> None:
    old = fake.add_job("llama3.2", script=["done"])
    fake.add_job("qwen3:8b", script=["done"])
    new = fake.add_job("llama3.2:latest", script=["done"])
    fake.add_job("llama3.2", script=["queued"])

    listing = client.list(state="done", model="llama3.2")

    assert [job.job_id for job in listing.jobs] == [new, old]
    assert listing.next_cursor is None


def test_iter_jobs_follows_cursors_across_pages(fake, client) -> None:
    ids = [fake.add_job() for _ in range(5)]

    everything = [job.job_id for job in client.iter_jobs(page_size=2)]
    first_three = [job.job_id for job in client.iter_jobs(page_size=2, limit=3)]

    assert everything == ids[::-1]
    assert first_three == ids[::-1][:3]
    assert client.list(limit=2).next_cursor is not None


# --- queue, ps, health ---------------------------------------------------------------------


def test_queue_ps_and_health(fake, client) -> None:
    fake.add_job("qwen3:8b", script=["queued"])
    fake.add_job("qwen3:8b", script=["queued"])

    queue = client.queue()

    assert queue["queued"] == [{"model": "qwen3:8b", "priority": 0, "count": 2}]
    assert queue["queued_total"] == 2
    assert client.ps()["models"][0]["name"] == "llama3.2:latest"
    assert client.health() == {"status": "ok", "degraded": False}


# --- auth, configuration, transport failures -----------------------------------------------


def test_a_token_is_sent_as_bearer_and_a_missing_one_is_unauthorized() -> None:
    fake = FakeForemanApi(token="s3cret")
    with ForemanClient("http://foreman.test", transport=fake.transport()) as anonymous:
        assert anonymous.health()["status"] == "ok"
        with pytest.raises(Unauthorized, match="unauthorized"):
            anonymous.queue()
    with ForemanClient("http://foreman.test", "s3cret", transport=fake.transport()) as client:
        assert client.queue()["queued_total"] == 0


def test_url_and_token_default_from_the_environment(monkeypatch) -> None:
    fake = FakeForemanApi(token="first")
    monkeypatch.setenv("FOREMAN_URL", "http://elsewhere.test:9000/")
    monkeypatch.setenv("FOREMAN_AUTH_TOKEN", "first, second")

    with ForemanClient(transport=fake.transport()) as client:
        assert client.url == "http://elsewhere.test:9000"
        assert client.queue()["queued_total"] == 0


def test_the_default_url_is_local(monkeypatch) -> None:
    monkeypatch.delenv("FOREMAN_URL", raising=False)

    assert base_url() == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match="http"):
        base_url("localhost:8080")


def test_an_unreachable_server_is_one_clear_error(fake, client) -> None:
    fake.unreachable = True

    with pytest.raises(ServerUnreachable) as caught:
        client.get("01JFAKE0000000000000000000")

    assert str(caught.value) == "cannot reach foreman at http://foreman.test (connection refused)"
    assert isinstance(caught.value, ClientError)


def test_a_non_json_error_keeps_the_status_and_a_readable_message() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500, text="boom"))
    with (
        ForemanClient("http://foreman.test", transport=transport) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.queue()

    assert (caught.value.status, caught.value.message) == (500, "boom")
    assert type(caught.value) is ApiError


def test_verify_signature_is_reexported_for_webhook_receivers() -> None:
    body = json.dumps({"type": "job.state_changed"}).encode()
    headers = signing.sign_headers("whsec_c2VjcmV0", "evt_1", body, timestamp=1_700_000_000)

    assert verify_signature is signing.verify_signature
    assert verify_signature("whsec_c2VjcmV0", headers, body, now=1_700_000_010)
    assert not verify_signature("other", headers, body, now=1_700_000_010)


# --- the async client ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_submits_and_waits_with_an_async_callback(fake) -> None:
    fake.next_script = ["queued", "queued", "loading", "working", "done"]
    seen: list[str] = []

    async def record(job: JobView) -> None:
        seen.append(job.state)

    async with AsyncForemanClient("http://foreman.test", transport=fake.transport()) as client:
        job_id = await client.submit("llama3.2", "async hi", system="sys")
        job = await client.wait(job_id, poll_interval=0, on_update=record)
        text = await client.completion(job)

    assert seen == ["queued", "loading", "working", "done"]
    assert text == "echo: async hi"
    assert fake.jobs[job_id].body["messages"][0] == {"role": "system", "content": "sys"}


@pytest.mark.anyio
async def test_async_client_iterates_pages_and_maps_errors(fake) -> None:
    ids = [fake.add_job(script=["queued"]) for _ in range(3)]
    done = fake.add_job(script=["done"])

    async with AsyncForemanClient("http://foreman.test", transport=fake.transport()) as client:
        listed = [job.job_id async for job in client.iter_jobs(page_size=1)]
        with pytest.raises(Conflict):
            await client.cancel(done)
        with pytest.raises(ForemanTimeout):
            await client.wait(ids[0], timeout=0, poll_interval=0)
        assert (await client.queue())["queued_total"] == 3
        assert (await client.health())["status"] == "ok"
        fake.unreachable = True
        with pytest.raises(ServerUnreachable, match="connection refused"):
            await client.ps()

    assert listed == [done, *ids[::-1]]
