"""The retry policy: which failures are retried, when, and when it gives up."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from foreman_core.errors import (
    TargetBrokeStream,
    TargetBusy,
    TargetError,
    TargetRejected,
    TargetUnreachable,
)
from foreman_core.job import new_job
from foreman_core.retry import GiveUp, RetryLater, RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy()


def after_attempts(attempts: int, max_attempts: int = 3):
    """A job whose `attempts`-th attempt just failed."""
    job = new_job(job_id="j", kind="chat", model="m", payload=b"{}", now=NOW)
    return replace(job, attempts=attempts, max_attempts=max_attempts)


retryable = st.sampled_from(
    [TargetUnreachable("connection refused"), TargetBusy(503, b"busy"), TargetBusy(429, b"")]
)
final = st.sampled_from(
    [
        TargetRejected(400, b'{"error":"bad"}'),
        TargetRejected(500, b"oops"),
        TargetBrokeStream("reset midway"),
        TargetError("unknown"),
    ]
)


@given(retryable, st.integers(1, 9))
def test_retryable_failures_are_retried_while_attempts_remain(error, attempts):
    decision = POLICY.decide(after_attempts(attempts, max_attempts=10), error, NOW)
    assert decision == RetryLater(NOW + POLICY.backoff(attempts), str(error))


@given(final, st.integers(1, 9))
def test_final_failures_give_up_at_once(error, attempts):
    assert POLICY.decide(after_attempts(attempts, max_attempts=10), error, NOW) == GiveUp(
        str(error)
    )


@given(retryable, st.integers(1, 5), st.integers(0, 5))
def test_the_last_attempt_gives_up_with_its_error(error, max_attempts, extra):
    decision = POLICY.decide(after_attempts(max_attempts + extra, max_attempts), error, NOW)
    assert decision == GiveUp(str(error))


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert POLICY.decide(after_attempts(1), TargetUnreachable(), NOW) == RetryLater(
        NOW + timedelta(seconds=1), "TargetUnreachable"
    )


def test_backoff_doubles_from_one_second() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in range(1, 9)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        60,
        60,
    ]


@given(st.integers(0, 10_000))
def test_backoff_never_exceeds_the_cap_and_never_shrinks(attempts):
    assert timedelta(0) < POLICY.backoff(attempts) <= timedelta(seconds=60)
    assert POLICY.backoff(attempts) <= POLICY.backoff(attempts + 1)


@given(st.integers(1, 6), st.floats(0, 600, allow_nan=False))
def test_the_longer_of_backoff_and_retry_after_wins(attempts, retry_after):
    busy = TargetBusy(503, b"busy", retry_after=retry_after)
    decision = POLICY.decide(after_attempts(attempts, max_attempts=10), busy, NOW)
    assert isinstance(decision, RetryLater)
    expected = max(POLICY.backoff(attempts), timedelta(seconds=retry_after))
    assert decision.not_before == NOW + expected
