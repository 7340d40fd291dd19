"""The job model: its state machine, model names, residency keys, fingerprints, webhook events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman_core.clock import UlidGenerator, is_ulid
from foreman_core.errors import InvalidTransition
from foreman_core.job import (
    ALLOWED_TRANSITIONS,
    FINISHED_STATES,
    LOAD_OPTIONS,
    Job,
    JobState,
    cancel,
    claim,
    complete,
    fail,
    mark_working,
    new_job,
    normalize_model,
    requeue,
    residency_key,
    state_change,
    submission_fingerprint,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)


def a_job(state: JobState = JobState.QUEUED, **changes: object) -> Job:
    """A job in `state`."""
    job = new_job(job_id="01J" + "0" * 23, kind="chat", model="m", payload=b"{}", now=T0)
    return replace(job, state=state, **changes)


MOVES: dict[JobState, list[Callable[[Job], Job]]] = {
    JobState.QUEUED: [lambda job: requeue(job, LATER, not_before=LATER, error="busy")],
    JobState.LOADING: [lambda job: claim(job, LATER, resident=False)],
    JobState.WORKING: [
        lambda job: claim(job, LATER, resident=True),
        lambda job: mark_working(job, LATER),
    ],
    JobState.DONE: [lambda job: complete(job, LATER, b"{}")],
    JobState.FAILED: [lambda job: fail(job, LATER, "broken")],
    JobState.CANCELLED: [lambda job: cancel(job, LATER)],
}
"""Every transition function, by the state it leads to."""

states = st.sampled_from(list(JobState))


# -- the state machine -------------------------------------------------------------------


@given(states, states, st.data())
def test_a_transition_succeeds_exactly_when_the_table_allows_it(start, goal, data):
    move = data.draw(st.sampled_from(MOVES[goal]))
    job = a_job(start)
    if goal in ALLOWED_TRANSITIONS[start]:
        moved = move(job)
        assert (moved.state, moved.updated_at) == (goal, LATER)
    else:
        with pytest.raises(InvalidTransition) as raised:
            move(job)
        assert (raised.value.current, raised.value.requested) == (start, goal)


@given(st.sampled_from(sorted(FINISHED_STATES)), states)
def test_finished_states_are_final(finished, goal):
    assert finished.finished
    for move in MOVES[goal]:
        with pytest.raises(InvalidTransition):
            move(a_job(finished))


def test_every_unfinished_state_can_be_cancelled() -> None:
    for state in set(JobState) - FINISHED_STATES:
        assert not state.finished
        assert JobState.CANCELLED in ALLOWED_TRANSITIONS[state]


@given(st.booleans(), st.integers(0, 5))
def test_claim_counts_an_attempt_and_loads_only_when_not_resident(resident, attempts):
    claimed = claim(a_job(attempts=attempts, error="old"), LATER, resident=resident)
    assert claimed.state == (JobState.WORKING if resident else JobState.LOADING)
    assert (claimed.attempts, claimed.started_at, claimed.error) == (attempts + 1, LATER, None)


def test_requeue_sets_the_backoff_and_forgets_the_start() -> None:
    running = claim(a_job(), T0, resident=True)
    later = LATER + timedelta(seconds=2)
    requeued = requeue(running, LATER, not_before=later, error="busy")
    assert (requeued.not_before, requeued.started_at, requeued.error) == (later, None, "busy")
    assert requeued.attempts == 1 and requeued.finished_at is None


@given(st.sampled_from(sorted(FINISHED_STATES)))
def test_finishing_records_when(goal):
    running = claim(a_job(), T0, resident=True)
    assert MOVES[goal][0](running).finished_at == LATER


def test_complete_and_fail_keep_what_happened() -> None:
    running = claim(a_job(), T0, resident=True)
    assert complete(running, LATER, b'{"done":true}').result == b'{"done":true}'
    assert fail(running, LATER, "target answered 500").error == "target answered 500"


# -- model names -------------------------------------------------------------------------

segments = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,11}", fullmatch=True)
tags = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,7}", fullmatch=True)
bare_names = st.lists(segments, min_size=1, max_size=3).map("/".join)
names = st.one_of(bare_names, st.tuples(bare_names, tags).map(":".join))


@given(names)
def test_normalize_model_is_idempotent(name):
    once = normalize_model(name)
    assert normalize_model(once) == once


@given(bare_names)
def test_a_name_without_a_tag_means_latest(name):
    assert normalize_model(name) == normalize_model(f"{name}:latest") == f"{name}:latest"


@given(bare_names, tags)
def test_a_tag_is_kept(name, tag):
    assert normalize_model(f"{name}:{tag}") == f"{name}:{tag}"


@given(bare_names)
def test_a_registry_port_is_not_a_tag(name):
    assert normalize_model(f"host:5000/{name}") == f"host:5000/{name}:latest"


def test_surrounding_whitespace_is_dropped() -> None:
    assert normalize_model("  llama3.2 ") == "llama3.2:latest"


# -- residency ---------------------------------------------------------------------------

json_values = st.one_of(st.integers(-5, 100_000), st.booleans(), st.text(max_size=5))
other_options = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda key: key not in LOAD_OPTIONS), json_values
)
load_options = st.dictionaries(st.sampled_from(sorted(LOAD_OPTIONS)), json_values, min_size=1)


@given(names, other_options)
def test_options_that_do_not_change_loading_do_not_change_residency(name, options):
    assert residency_key(name, options) == residency_key(name, None) == normalize_model(name)


@given(names, load_options, other_options)
def test_load_options_make_their_own_residency(name, load, other):
    key = residency_key(name, {**other, **load})
    assert key != normalize_model(name)
    assert key == residency_key(name, dict(reversed(list(load.items()))))  # order-free
    assert key.startswith(normalize_model(name) + "|")


@given(names, st.sampled_from(sorted(LOAD_OPTIONS)), json_values, json_values)
def test_different_load_values_are_different_residencies(name, option, one, other):
    same = residency_key(name, {option: one}) == residency_key(name, {option: other})
    assert same == (one == other and type(one) is type(other))


def test_new_job_normalises_and_keys_by_residency() -> None:
    job = new_job(
        job_id="x", kind="chat", model="qwen3", payload=b"{}", now=T0, options={"num_ctx": 8}
    )
    assert (job.model, job.residency) == ("qwen3:latest", "qwen3:latest|num_ctx=8")
    assert (job.state, job.attempts, job.not_before) == (JobState.QUEUED, 0, T0)


# -- fingerprints ------------------------------------------------------------------------

submissions = st.tuples(
    st.sampled_from(["chat", "generate"]),
    st.binary(max_size=20),
    st.integers(-3, 3),
    st.one_of(st.none(), st.text(max_size=10)),
)


@given(submissions, submissions)
def test_fingerprints_match_exactly_for_equal_submissions(one, other):
    assert (submission_fingerprint(*one) == submission_fingerprint(*other)) == (
        one == other or (one[:3] == other[:3] and {one[3], other[3]} <= {None, ""})
    )


def test_fingerprint_parts_cannot_run_into_each_other() -> None:
    assert submission_fingerprint("chat", b"x", 0, None) != submission_fingerprint(
        "cha", b"tx", 0, None
    )


# -- webhook events ----------------------------------------------------------------------


def test_a_state_change_of_an_async_job_with_a_webhook_is_an_event() -> None:
    queued = a_job(webhook_url="http://hook/")
    failed = fail(claim(queued, T0, resident=True), LATER, "broken")
    event = state_change(queued, failed, "E1")
    assert event is not None
    assert (event.event_id, event.job_id, event.url) == ("E1", queued.id, "http://hook/")
    assert (event.state, event.previous_state, event.error) == (
        JobState.FAILED,
        JobState.QUEUED,
        "broken",
    )
    assert (event.attempts, event.timestamp) == (1, LATER)
    submitted = state_change(None, queued, "E0")
    assert submitted is not None and submitted.previous_state is None


@given(states, states)
def test_no_event_without_a_webhook_for_sync_jobs_or_without_a_change(before, after):
    hooked = a_job(before, webhook_url="http://hook/")
    assert state_change(hooked, replace(hooked, state=after, sync=True), "E") is None
    plain = a_job(before)
    assert state_change(plain, replace(plain, state=after), "E") is None
    assert state_change(hooked, replace(hooked, state=before), "E") is None
    event = state_change(hooked, replace(hooked, state=after), "E") if before != after else None
    assert (event is not None) == (before != after)
    if event is not None and after != JobState.FAILED:
        assert event.error is None


def test_model_names_are_one_model_whatever_their_case() -> None:
    assert normalize_model("Llama3.2") == normalize_model("llama3.2:LATEST") == "llama3.2:latest"


def test_ulids_are_unique_valid_and_growing_across_many_reads_of_randomness() -> None:
    ids = UlidGenerator()
    made = [ids.new_id() for _ in range(3 * UlidGenerator.RANDOM_BYTES_PER_READ // 10 + 7)]
    assert all(is_ulid(i) for i in made)
    assert made == sorted(made) and len(set(made)) == len(made)
