"""The SQLite store's worker is SIGKILLed at random points; no acknowledged job is lost."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from foreman_adapters.sqlite import SqliteJobStore
from foreman_core.clock import SystemClock, UlidGenerator
from foreman_core.job import RUNNING_STATES, JobState

WORKER = Path(__file__).with_name("_crash_worker.py")
ROUNDS = 5


def run_until_killed(db_path: Path, seed: int, acks_wanted: int) -> list[str]:
    """Start the worker, read `acks_wanted` acknowledged ids, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, str(WORKER), str(db_path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A hung child must not hang the suite.
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    acked: list[str] = []
    try:
        assert child.stdout is not None
        while len(acked) < acks_wanted:
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                raise AssertionError(f"worker died on its own: {child.stderr.read()}")
            acked.append(line.strip())
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    return acked


def integrity(db_path: Path) -> str:
    """SQLite's own verdict on the file."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_killed_worker_loses_no_acknowledged_job_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "foreman.db"
    rng = random.Random(20250301)
    acknowledged: list[str] = []
    recovered_total = 0
    for round_number in range(ROUNDS):
        acknowledged += run_until_killed(
            db_path, seed=round_number, acks_wanted=rng.randint(1, 150)
        )

        assert integrity(db_path) == "ok"
        store = SqliteJobStore(db_path, UlidGenerator())
        try:
            for job_id in acknowledged:
                job = store.get(job_id)
                assert job.id == job_id and not job.sync
            recovered = store.recover_interrupted(SystemClock().now())
            recovered_total += len(recovered)
            assert all(job.state in {JobState.QUEUED, JobState.FAILED} for job in recovered)
            assert store.summary().running == []
            for state in RUNNING_STATES:
                assert store.list(state=state).jobs == []
        finally:
            store.close()
    assert len(set(acknowledged)) == len(acknowledged)
    assert recovered_total > 0  # the kills did interrupt running jobs
