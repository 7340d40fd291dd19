"""POST /jobs against generated bodies: arbitrary bytes, arbitrary JSON, and Ollama-shaped
requests with fields of every wrong type. Whatever arrives, foreman answers without a 5xx and
never stores a job that GET /jobs/{id} or the worker could not read back.

The app runs in-process (worker, dispatcher and all) in front of the simulated Ollama over ASGI,
with its SQLite store in a temporary file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from foreman_adapters.simulator import SimulatedOllama
from foreman_app.app import create_app
from foreman_app.config import Settings
from foreman_app.container import Container, build_container, reach_ollama_through
from foreman_core.payloads import load_body, target_body

MODELS = ["llama3.2", "llama3.2:latest", "qwen3:0.6b", "qwen2.5:0.5b"]
FIELDS = [
    "model",
    "kind",
    "priority",
    "messages",
    "prompt",
    "options",
    "state_webhook_url",
    "format",
    "keep_alive",
    "think",
    "tools",
    "stream",
    "context",
    "images",
    "raw",
    "system",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
options = st.dictionaries(
    st.sampled_from(["num_ctx", "temperature", "num_predict", "seed", "stop"]), json_values
)
chat_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=30)}
            ),
            max_size=3,
        ),
    },
    optional={"kind": st.just("chat")},
)
generate_requests = st.fixed_dictionaries(
    {"kind": st.just("generate"), "model": st.sampled_from(MODELS), "prompt": st.text(max_size=30)}
)
valid_requests = st.tuples(
    chat_requests | generate_requests,
    st.fixed_dictionaries(
        {},
        optional={
            "priority": st.integers(min_value=-1000, max_value=1000),
            "options": options,
            "state_webhook_url": st.sampled_from(
                ["http://127.0.0.1:9/hook", "https://hooks.example.com/x"]
            ),
            "format": st.just("json") | st.just({"type": "object"}),
            "keep_alive": st.sampled_from(["5m", 0, -1, 30.5]),
            "think": st.booleans(),
            "stream": json_values,
            "unknown_extra": json_values,
        },
    ),
).map(lambda parts: {**parts[0], **parts[1]})


def _replace(request: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**request, field: value}


wrong_typed = st.builds(_replace, valid_requests, st.sampled_from(FIELDS), json_values)
huge_priority = st.builds(
    _replace,
    valid_requests,
    st.just("priority"),
    st.integers(min_value=2**62) | st.integers(max_value=-(2**62)) | st.sampled_from([1001, -1001]),
)
extended = st.builds(_replace, valid_requests, st.text(max_size=10), json_values)


def _spoil_utf8(request: dict[str, Any]) -> bytes:
    """The request with a byte that is not UTF-8 inside a string."""
    encoded = json.dumps(request).encode()
    return encoded.replace(b'"model": "', b'"model": "\xff', 1)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = (
    valid_requests.map(_encode)
    | wrong_typed.map(_encode)
    | huge_priority.map(_encode)
    | extended.map(_encode)
    | json_values.map(_encode)
    | st.binary(max_size=64)
    | valid_requests.map(lambda request: _encode(request)[:-1])
    | valid_requests.map(_spoil_utf8)
)
idempotency_keys = st.none() | st.sampled_from(["k1", "k2", "x" * 300, " "])


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, Container]]:
    """The whole app, started, in front of the simulator; its SQLite store in `tmp_path`."""
    settings = Settings.from_env(
        {"FOREMAN_DB_PATH": str(tmp_path / "foreman.db"), "FOREMAN_MAX_QUEUE": "100000"}
    )
    container = build_container(settings)
    reach_ollama_through(container, httpx.ASGITransport(app=SimulatedOllama()))
    with TestClient(create_app(container)) as client:
        yield client, container


def check_stored(client: TestClient, container: Container, job_id: str) -> None:
    """The job reads back through the API, and its payload through the worker's eyes."""
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == job_id
    stored = container.store().get(job_id)
    payload = json.loads(stored.payload)
    assert isinstance(payload, dict)
    assert isinstance(payload["model"], str)
    assert payload["model"].strip()
    assert json.loads(target_body(stored))["stream"] is False
    assert json.loads(load_body(stored))["model"] == payload["model"]


@pytest.mark.slow
def test_no_body_makes_a_5xx_or_a_broken_job(app_client: tuple[TestClient, Container]) -> None:
    client, container = app_client
    accepted: list[str] = []

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies, key=idempotency_keys)
    def post(body: bytes, key: str | None) -> None:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        response = client.post("/jobs", content=body, headers=headers)
        assert response.status_code < 500, (body, response.text)
        answer: Any = response.json()
        if response.status_code == 202:
            assert response.headers["location"] == f"/jobs/{answer['job_id']}"
            check_stored(client, container, answer["job_id"])
            accepted.append(answer["job_id"])
        else:
            assert response.status_code in (400, 404, 422), response.text
            assert list(answer) == ["error"]
            assert isinstance(answer["error"], str)

    post()
    print("ACCEPTED", len(accepted))
    assert accepted, "no generated body was accepted: the strategy lost its valid requests"
    listed, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get("/jobs", params=params).json()
        listed += [item["job_id"] for item in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(accepted) <= set(listed)
    for job_id in listed:
        check_stored(client, container, job_id)
