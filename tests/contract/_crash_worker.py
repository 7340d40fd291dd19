"""Works a SQLite job store until it is killed: the child process of test_store_crash.

Usage: python _crash_worker.py DB_PATH SEED. Prints each async job's id once `add` has returned,
then claims, runs and completes jobs, so that a kill lands anywhere in the store's writes.
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta

from foreman_adapters.sqlite import SqliteJobStore
from foreman_core import job as jobs
from foreman_core.clock import SystemClock, UlidGenerator
from foreman_core.job import CHAT, Artifact, JobState, new_job

MODELS = ["llama3.2", "qwen3:8b", "gemma3"]


def work(path: str, seed: int) -> None:
    """Add, acknowledge, claim, run and complete jobs forever."""
    rng = random.Random(seed)
    ids, clock = UlidGenerator(), SystemClock()
    store = SqliteJobStore(path, ids)
    while True:
        model = rng.choice(MODELS)
        job = store.add(
            new_job(
                job_id=ids.new_id(),
                kind=CHAT,
                model=model,
                payload=b'{"model":"' + model.encode() + b'"}' + rng.randbytes(rng.randrange(64)),
                now=clock.now(),
                priority=rng.choice([0, 5]),
                webhook_url="https://hooks.example/x" if rng.random() < 0.5 else None,
            )
        )
        print(job.id, flush=True)
        if rng.random() < 0.3:
            continue
        claimed = store.claim_next(
            resident=[rng.choice(MODELS) + ":latest"], now=clock.now(), max_wait=timedelta(0)
        )
        if claimed is None:
            continue
        if claimed.state == JobState.LOADING:
            claimed = store.save(jobs.mark_working(claimed, clock.now()), expected=JobState.LOADING)
        if rng.random() < 0.2:
            continue  # left running, as a crash mid-generation would leave it
        text = rng.randbytes(rng.randrange(4096))
        store.save(
            jobs.complete(claimed, clock.now(), b"{}"),
            expected=JobState.WORKING,
            artifacts=[Artifact("completion", "text/plain", text)],
        )


if __name__ == "__main__":
    work(sys.argv[1], int(sys.argv[2]))
