"""foreman's core inside another program: queue work, run it drain-by-model, retry failures.

Run it with `python docs/examples/embed_core.py`; tests/unit/test_docs_example.py runs it too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from foreman_core import (
    CHAT,
    InMemoryJobStore,
    JobState,
    RetryLater,
    RetryPolicy,
    TargetBusy,
    TargetError,
    UlidGenerator,
    new_job,
    queue_order,
)
from foreman_core.job import Job, complete, fail, mark_working, requeue

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MAX_WAIT = timedelta(minutes=10)  # the starvation bound: older jobs go first, whatever the model


class SteppedClock:
    """A Clock (see foreman_core.ports) whose time moves only when told, so the run repeats."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        """The current (simulated) time."""
        return self.moment

    def advance(self, seconds: float) -> None:
        """Let time pass."""
        self.moment += timedelta(seconds=seconds)


def generate(model: str, prompt: str, attempt: int) -> str:
    """Stands in for your inference call. The first attempt at 'flaky' finds the server busy."""
    if prompt == "flaky" and attempt == 1:
        raise TargetBusy(503, b'{"error":"server busy"}')
    return f"{model} says hello to {prompt!r}"


def submit(store: InMemoryJobStore, ids: UlidGenerator, clock: SteppedClock) -> None:
    """Work arrives interleaving two models, as it does from several users."""
    for model, prompt in [
        ("llama3.2", "a"),
        ("qwen3:8b", "b"),
        ("llama3.2", "flaky"),
        ("qwen3:8b", "d"),
    ]:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        job = new_job(
            job_id=ids.new_id(),
            kind=CHAT,
            model=model,
            payload=json.dumps(body).encode(),
            now=clock.now(),
        )
        store.add(job)
        clock.advance(1)


def run_one(store: InMemoryJobStore, job: Job, clock: SteppedClock, policy: RetryPolicy) -> str:
    """Load (if the claim says so), generate, and store the outcome; one line of log."""
    prompt = json.loads(job.payload)["messages"][-1]["content"]
    stamp = f"+{(clock.now() - START).total_seconds():.0f}s {job.model} {prompt!r}"
    if job.state == JobState.LOADING:  # its model was not the resident one
        clock.advance(2)  # loading a model takes a while
        job = store.save(mark_working(job, clock.now()), expected=JobState.LOADING)
        stamp += " (loaded)"
    try:
        text = generate(job.model, prompt, job.attempts)
    except TargetError as failure:
        decision = policy.decide(job, failure, clock.now())
        if isinstance(decision, RetryLater):
            store.save(
                requeue(job, clock.now(), not_before=decision.not_before, error=decision.error),
                expected=job.state,
            )
            wait = (decision.not_before - clock.now()).total_seconds()
            return f"{stamp}: attempt {job.attempts} failed, retry in {wait:.0f}s"
        store.save(fail(job, clock.now(), decision.error), expected=job.state)
        return f"{stamp}: failed: {decision.error}"
    clock.advance(1)  # generating takes a while too
    store.save(complete(job, clock.now(), text.encode()), expected=job.state)
    return f"{stamp}: {text}"


def main() -> list[str]:
    """Run everything to the end; the log, one line per event."""
    clock, ids = SteppedClock(START), UlidGenerator()
    store = InMemoryJobStore(ids)
    policy = RetryPolicy(
        base=timedelta(seconds=2)
    )  # 2 s, 4 s, 8 s, … (default: 1 s, capped at 60 s)
    submit(store, ids, clock)
    queued = store.list(state=JobState.QUEUED).jobs
    log = ["planned: " + ", ".join(job.model for job in queue_order(queued, resident=[]))]
    resident: list[str] = []  # what is loaded, most recently used first
    while store.count_queued():
        job = store.claim_next(resident=resident, now=clock.now(), max_wait=MAX_WAIT)
        if job is None:  # every queued job is backing off: sleep until the first may run
            clock.moment = store.next_not_before(clock.now()) or clock.now()
            continue
        resident = [job.residency]
        log.append(run_one(store, job, clock, policy))
    return log


if __name__ == "__main__":
    print("\n".join(main()))
