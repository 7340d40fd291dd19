"""The app's `LiveResponse`: what its handler reads of what the worker fed it, and the HTTP
status and Ollama-shaped body of each reason the worker gives for an error of its own."""

from __future__ import annotations

import pytest

from foreman_app.live import ABORT_STATUS, LiveResponse, ResponseFailed, ResponseStarted
from foreman_core import TargetRejected
from foreman_core.ports import AbortReason

pytestmark = pytest.mark.anyio

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"


def fed(*chunks: bytes) -> LiveResponse:
    """A response the target began 200 with `chunks` so far."""
    live = LiveResponse()
    live.begin(200, NDJSON)
    for chunk in chunks:
        live.send(chunk)
    return live


async def test_a_begun_response_hands_over_each_chunk_and_then_the_end() -> None:
    live = fed(b"a\n")
    assert (live.started, live.finished) == (True, False)
    assert await live.start() == ResponseStarted(200, NDJSON)
    body = live.chunks()
    assert await anext(body) == b"a\n"

    live.send(b"b\n")
    live.end()

    assert [chunk async for chunk in body] == [b"b\n"]
    assert live.finished
    assert [chunk async for chunk in live.chunks()] == []  # a second reader sees the end too


async def test_complete_gives_the_whole_body_once_it_has_ended() -> None:
    live = fed(b"a", b"b")
    live.end()
    assert await live.complete() == (ResponseStarted(200, NDJSON), b"ab")
    assert await live.complete() == (ResponseStarted(200, NDJSON), b"")


async def test_a_rejection_is_answered_with_the_targets_own_status_and_bytes() -> None:
    live = LiveResponse()
    live.reject(TargetRejected(400, b'{"error":"invalid format"}', JSON))

    failed = ResponseFailed(400, b'{"error":"invalid format"}', JSON)
    assert (live.started, live.finished) == (False, True)
    assert await live.start() == failed
    assert await live.complete() == (failed, b"")
    assert [chunk async for chunk in live.chunks()] == []


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (AbortReason.CANCELLED, 409),
        (AbortReason.SHUTDOWN, 503),
        (AbortReason.TARGET_FAILED, 502),
        (AbortReason.UNSTORED, 500),
        (AbortReason.FAULT, 500),
    ],
)
async def test_an_abort_before_the_body_answers_the_reasons_status_in_ollamas_shape(
    reason: AbortReason, status: int
) -> None:
    live = LiveResponse()
    live.abort(reason, "it went wrong: é")

    assert live.finished
    assert await live.start() == ResponseFailed(
        status, '{"error":"it went wrong: é"}'.encode(), JSON
    )


def test_every_reason_has_a_status() -> None:
    assert set(ABORT_STATUS) == set(AbortReason)


async def test_an_abort_after_the_body_began_ends_it_with_an_error_line() -> None:
    live = fed(b"a\n")
    live.abort(AbortReason.SHUTDOWN, "interrupted")

    assert live.finished
    assert await live.start() == ResponseStarted(200, NDJSON)
    assert [chunk async for chunk in live.chunks()] == [b"a\n", b'{"error":"interrupted"}\n']


async def test_an_abandoned_response_drops_what_is_buffered_and_what_comes() -> None:
    live = fed(b"a\n")
    live.abandon()
    live.send(b"b\n")
    live.end()

    assert await live.complete() == (ResponseStarted(200, NDJSON), b"")
