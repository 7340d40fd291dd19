"""What the worker sends to the target, and what it keeps of the answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman_core.job import Artifact, Job, new_job
from foreman_core.payloads import FOREMAN_FIELDS, TEXT, load_body, result_artifacts, target_body

NOW = datetime(2026, 1, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k not in FOREMAN_FIELDS | {"stream"}),
    json_values,
    max_size=5,
)


def job_for(request: dict[str, Any] | bytes, *, sync: bool, kind: str = "chat") -> Job:
    """A job carrying `request` as its payload."""
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    return new_job(job_id="j", kind=kind, model="m", payload=payload, now=NOW, sync=sync)


@given(st.binary(max_size=50))
def test_a_sync_job_sends_the_clients_bytes_unchanged(payload):
    assert target_body(job_for(payload, sync=True)) == payload


@given(
    extra_fields,
    st.sampled_from([True, False, None]),
    st.dictionaries(st.sampled_from(sorted(FOREMAN_FIELDS)), json_values),
)
def test_an_async_job_sends_ollamas_fields_without_streaming(extra, stream, foreman_fields):
    request = {**extra, "model": "m"}
    if stream is not None:
        request["stream"] = stream
    sent = json.loads(target_body(job_for({**request, **foreman_fields}, sync=False)))
    assert sent == {**request, "stream": False}


def test_load_body_loads_the_model_as_the_job_will_use_it() -> None:
    request = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_ctx": 8192, "temperature": 0.2},
        "keep_alive": "1h",
        "format": "json",
        "stream": True,
    }
    assert json.loads(load_body(job_for(request, sync=True))) == {
        "model": "qwen3",
        "messages": [],
        "stream": False,
        "options": {"num_ctx": 8192, "temperature": 0.2},
        "keep_alive": "1h",
    }


def test_load_body_of_a_generate_job_without_options() -> None:
    body = load_body(job_for({"model": "m", "prompt": "hello"}, sync=False, kind="generate"))
    assert json.loads(body) == {"model": "m", "messages": [], "stream": False}


def test_chat_artifacts_hold_the_content_and_the_thinking() -> None:
    result = {"message": {"role": "assistant", "content": "Hi é", "thinking": "hmm"}}
    assert result_artifacts("chat", result) == [
        Artifact("completion", TEXT, "Hi é".encode()),
        Artifact("thinking", TEXT, b"hmm"),
    ]


def test_generate_artifacts_hold_the_response_and_the_thinking() -> None:
    result = {"response": "42", "thinking": "let me see", "done": True}
    assert result_artifacts("generate", result) == [
        Artifact("completion", TEXT, b"42"),
        Artifact("thinking", TEXT, b"let me see"),
    ]


@given(st.sampled_from(["chat", "generate"]), st.sampled_from([None, "", "absent"]))
def test_thinking_is_kept_only_when_not_empty(kind, thinking):
    text = {"content": "done"} if kind == "chat" else {"response": "done"}
    if thinking != "absent":
        text["thinking"] = thinking
    result = {"message": text} if kind == "chat" else text
    assert result_artifacts(kind, result) == [Artifact("completion", TEXT, b"done")]


def test_an_empty_answer_is_an_empty_completion() -> None:
    assert result_artifacts("chat", {"message": {"role": "assistant"}}) == [
        Artifact("completion", TEXT, b"")
    ]
    assert result_artifacts("generate", {}) == [Artifact("completion", TEXT, b"")]


@pytest.mark.parametrize("zero", [0, 0.0, "0", "0s", "0m0s", "0.0h"])
def test_a_zero_keep_alive_is_not_copied_into_the_load_request(zero: object) -> None:
    payload = json.dumps({"model": "m", "messages": [], "keep_alive": zero}).encode()
    job = new_job(job_id="J", kind="chat", model="m", payload=payload, now=NOW)

    assert "keep_alive" not in json.loads(load_body(job))


@pytest.mark.parametrize("kept", [-1, 300, "5m", "10s", "-1m"])
def test_any_other_keep_alive_is_copied_into_the_load_request(kept: object) -> None:
    payload = json.dumps({"model": "m", "messages": [], "keep_alive": kept}).encode()
    job = new_job(job_id="J", kind="chat", model="m", payload=payload, now=NOW)

    assert json.loads(load_body(job))["keep_alive"] == kept
