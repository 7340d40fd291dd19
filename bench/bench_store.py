"""Benchmark of the job stores: SqliteJobStore against InMemoryJobStore.

Usage: python bench/bench_store.py [--quick]

Measures the enqueue rate, claim→working→done cycles per second, claim latency with 1k, 100k and
1M queued jobs over 8 models, and the peak RSS of a process that works a store holding the
largest queue. Prints markdown tables and checks the goals of the job store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from foreman_adapters.sqlite import SqliteJobStore
from foreman_adapters.sqlite.rows import INSERT_JOB_SQL, job_row
from foreman_core import job as jobs
from foreman_core.clock import UlidGenerator
from foreman_core.job import CHAT, Artifact, Job, JobState, new_job
from foreman_core.memory_store import InMemoryJobStore

MODELS = [f"model-{n}:latest" for n in range(8)]
MAX_WAIT = timedelta(minutes=10)
PAYLOAD = json.dumps(
    {"model": "model-0", "messages": [{"role": "user", "content": "Why is the sky blue?" * 4}]}
).encode()
COMPLETION = Artifact("completion", "text/plain", b"Because of Rayleigh scattering. " * 8)

Store = SqliteJobStore | InMemoryJobStore


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    enqueues: int
    async_enqueues: int
    cycles: int
    sizes: tuple[int, ...]
    claims: int
    memory_sizes: tuple[int, ...]
    memory_claims: int


FULL = Plan(20_000, 2_000, 10_000, (1_000, 100_000, 1_000_000), 3_000, (1_000, 100_000), 30)
QUICK = Plan(3_000, 300, 2_000, (1_000, 10_000, 100_000), 500, (1_000, 10_000), 30)


def make_job(ids: UlidGenerator, index: int, now: datetime, *, sync: bool = True) -> Job:
    """A queued chat job for one of the 8 models."""
    return new_job(
        job_id=ids.new_id(),
        kind=CHAT,
        model=MODELS[index % len(MODELS)],
        payload=PAYLOAD,
        now=now,
        sync=sync,
    )


def open_store(kind: str, directory: Path, ids: UlidGenerator) -> Store:
    """A fresh store of the given kind."""
    if kind == "memory":
        return InMemoryJobStore(ids)
    return SqliteJobStore(directory / f"{kind}-{time.monotonic_ns()}.db", ids)


def rate(count: int, seconds: float) -> float:
    """Operations per second."""
    return count / seconds if seconds > 0 else float("inf")


# -- throughput --------------------------------------------------------------------------------


def enqueue_rate(kind: str, directory: Path, count: int, *, sync: bool) -> float:
    """Adds per second into an empty store."""
    ids = UlidGenerator()
    store = open_store(kind, directory, ids)
    now = datetime.now(UTC)
    batch = [make_job(ids, n, now, sync=sync) for n in range(count)]
    start = time.perf_counter()
    for job in batch:
        store.add(job)
    elapsed = time.perf_counter() - start
    store.close()
    return rate(count, elapsed)


def cycle_rate(kind: str, directory: Path, count: int) -> float:
    """claim (loading) → working → done with a completion artifact, per second."""
    ids = UlidGenerator()
    store = open_store(kind, directory, ids)
    now = datetime.now(UTC)
    for n in range(count):
        store.add(make_job(ids, n, now))
    start = time.perf_counter()
    for _ in range(count):
        claimed = store.claim_next(resident=[], now=now, max_wait=MAX_WAIT)
        assert claimed is not None and claimed.state == JobState.LOADING
        working = store.save(jobs.mark_working(claimed, now), expected=JobState.LOADING)
        store.save(
            jobs.complete(working, now, b"{}"), expected=JobState.WORKING, artifacts=[COMPLETION]
        )
    elapsed = time.perf_counter() - start
    store.close()
    return rate(count, elapsed)


# -- claim latency ----------------------------------------------------------------------------


def bulk_rows(ids: UlidGenerator, count: int, start: datetime) -> Iterator[tuple[object, ...]]:
    """`jobs` rows of `count` queued jobs created one microsecond apart from `start`."""
    template = make_job(ids, 0, start)
    for n in range(count):
        model = MODELS[n % len(MODELS)]
        created = start + timedelta(microseconds=n)
        yield job_row(
            Job(
                id=ids.new_id(),
                kind=CHAT,
                model=model,
                residency=model,
                payload=PAYLOAD,
                priority=0,
                state=JobState.QUEUED,
                sync=True,
                attempts=0,
                max_attempts=3,
                created_at=created,
                updated_at=created,
                not_before=created,
                fingerprint=template.fingerprint,
            )
        )


def build_queue(path: Path, count: int) -> float:
    """A store file holding `count` queued jobs, loaded in one transaction; returns seconds."""
    SqliteJobStore(path, UlidGenerator()).close()  # the schema, by the store's own migrations
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Bench-only shortcuts: a throwaway file needs neither fsync nor a WAL while loading.
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN IMMEDIATE")
        start = datetime.now(UTC) - timedelta(microseconds=count) - timedelta(seconds=1)
        conn.executemany(INSERT_JOB_SQL, bulk_rows(UlidGenerator(), count, start))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return time.perf_counter() - started


def claim_latencies(store: Store, ids: UlidGenerator, claims: int) -> list[float]:
    """Seconds per real `claim_next`; each claimed job is completed and replaced, untimed."""
    latencies = []
    for n in range(claims):
        now = datetime.now(UTC)
        resident = [MODELS[(n // 50) % len(MODELS)]]
        start = time.perf_counter()
        claimed = store.claim_next(resident=resident, now=now, max_wait=MAX_WAIT)
        latencies.append(time.perf_counter() - start)
        assert claimed is not None and claimed.state == JobState.WORKING
        store.save(jobs.complete(claimed, now, b"{}"), expected=JobState.WORKING)
        store.add(make_job(ids, n, now))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` fall (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sqlite_claim_latency(path: Path, size: int, claims: int) -> tuple[float, float]:
    """(p50, p99) of claims on the SQLite store at `path`, which holds `size` queued jobs."""
    ids = UlidGenerator()
    store = SqliteJobStore(path, ids)
    try:
        assert store.count_queued() == size
        claim_latencies(store, ids, min(claims, 100))  # warm the page cache
        latencies = claim_latencies(store, ids, claims)
    finally:
        store.close()
    return percentile(latencies, 0.5), percentile(latencies, 0.99)


def memory_claim_latency(size: int, claims: int) -> tuple[float, float]:
    """(p50, p99) of claims on an in-memory store with `size` queued jobs."""
    ids = UlidGenerator()
    store = InMemoryJobStore(ids)
    now = datetime.now(UTC)
    for n in range(size):
        store.add(make_job(ids, n, now))
    latencies = claim_latencies(store, ids, claims)
    return percentile(latencies, 0.5), percentile(latencies, 0.99)


# -- memory -----------------------------------------------------------------------------------


def rss_child(path: str, claims: int) -> None:
    """In a fresh process: work the store at `path`, then print the peak RSS in KiB.

    Also times the whole-queue reads once each, for the record.
    """
    ids = UlidGenerator()
    store = SqliteJobStore(path, ids)
    claim_latencies(store, ids, claims)
    newest = store.list(state=JobState.QUEUED, limit=1).jobs[0]
    seconds = {}
    for name, read in (
        ("count_queued", store.count_queued),
        ("summary", store.summary),
        ("queue_position", lambda: store.queue_position(newest.id, [MODELS[0]])),
    ):
        start = time.perf_counter()
        read()
        seconds[name] = time.perf_counter() - start
    store.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": peak_kib, **seconds}))


def build_child(path: str, size: int) -> None:
    """In a fresh process: build the queue file, then print how long loading took."""
    print(json.dumps({"seconds": build_queue(Path(path), size)}))


def baseline_child() -> None:
    """In a fresh process: import everything the store needs, then print the peak RSS in KiB."""
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_child(*args: str) -> dict[str, float]:
    """Run this script as a child with `args` and parse its JSON answer."""
    run = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


# -- report -----------------------------------------------------------------------------------


def machine() -> list[str]:
    """Facts about the machine the figures come from."""
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"- CPU: {cpu}, nproc {os.cpu_count()}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        f"- {platform.system()} {platform.release()}",
    ]


def us(seconds: float) -> str:
    """Seconds as microseconds for the tables."""
    return f"{seconds * 1e6:,.0f} µs"


def timed(label: str, measure: Callable[[], object]) -> object:
    """Run one measurement, telling stderr what is going on."""
    print(f"… {label}", file=sys.stderr, flush=True)
    return measure()


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rss-child", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--build-child", nargs=2, metavar=("DB", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, claims=1000)
        return
    if args.build_child:
        build_child(args.build_child[0], int(args.build_child[1]))
        return
    if args.baseline_child:
        baseline_child()
        return
    plan = QUICK if args.quick else FULL
    kinds = ("sqlite", "memory")

    with tempfile.TemporaryDirectory(prefix="bench-store-") as name:
        directory = Path(name)
        queues = {size: directory / f"queue-{size}.db" for size in plan.sizes}
        largest, smallest = max(plan.sizes), min(plan.sizes)
        # Queue files are built, and RSS measured, in children spawned while this process is
        # still small: Linux carries the parent's peak RSS into a child's ru_maxrss.
        load_seconds = {
            size: timed(f"bulk load {size:,}", lambda p=path, n=size: run_child(
                "--build-child", str(p), str(n))["seconds"])
            for size, path in queues.items()
        }  # fmt: skip
        baseline = timed("baseline RSS child", lambda: run_child("--baseline-child"))
        rss = timed("peak RSS child", lambda: run_child("--rss-child", str(queues[largest])))
        db_mib = queues[largest].stat().st_size / 2**20

        enqueue, enqueue_async, cycles = {}, {}, {}
        for kind in kinds:
            enqueue[kind] = timed(
                f"enqueue {kind}",
                lambda k=kind: enqueue_rate(k, directory, plan.enqueues, sync=True),
            )
            enqueue_async[kind] = timed(
                f"async enqueue {kind}",
                lambda k=kind: enqueue_rate(k, directory, plan.async_enqueues, sync=False),
            )
            cycles[kind] = timed(
                f"cycles {kind}", lambda k=kind: cycle_rate(k, directory, plan.cycles)
            )
        latency = {
            size: timed(
                f"claim latency at {size:,}",
                lambda p=path, n=size: sqlite_claim_latency(p, n, plan.claims),
            )
            for size, path in queues.items()
        }
        memory_latency = {
            size: timed(
                f"in-memory claim latency at {size:,}",
                lambda size=size: memory_claim_latency(size, plan.memory_claims),
            )
            for size in plan.memory_sizes
        }

    command = "python bench/bench_store.py" + (" --quick" if args.quick else "")
    lines = [
        f"Command: `{command}`",
        "",
        *machine(),
        "",
        "| measure | SqliteJobStore | InMemoryJobStore | SQLite / memory |",
        "|---|---:|---:|---:|",
    ]
    for label, figures in (
        (f"sync enqueues/s ({plan.enqueues:,} jobs)", enqueue),
        (f"async enqueues/s, fsynced ({plan.async_enqueues:,} jobs)", enqueue_async),
        (f"claim→working→done cycles/s ({plan.cycles:,})", cycles),
    ):
        sqlite_rate, memory_rate = figures["sqlite"], figures["memory"]
        lines.append(
            f"| {label} | {sqlite_rate:,.0f} | {memory_rate:,.0f} | "
            f"{sqlite_rate / memory_rate:.2f} |"
        )
    lines += [
        "",
        f"Claim latency, the real `claim_next` ({plan.claims:,} claims per size; in-memory "
        f"{plan.memory_claims} claims), queued jobs spread over 8 models:",
        "",
        "| queued jobs | SQLite p50 | SQLite p99 | in-memory p50 | SQLite bulk load |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, (p50, p99) in latency.items():
        memory = memory_latency.get(size)
        memory_p50 = us(memory[0]) if memory else "—"
        lines.append(
            f"| {size:,} | {us(p50)} | {us(p99)} | {memory_p50} | {load_seconds[size]:.1f} s |"
        )
    growth = latency[largest][0] / latency[smallest][0]
    peak_mib = rss["peak_kib"] / 1024
    lines += [
        "",
        f"Peak RSS of a process that opens the {largest:,}-job store ({db_mib:,.0f} MiB file) "
        "and works it (1,000 claim/complete/add cycles, count, summary, list, queue position): "
        f"**{peak_mib:.1f} MiB** (the interpreter with the store's imports alone: "
        f"{baseline['peak_kib'] / 1024:.1f} MiB).",
        "",
        f"Whole-queue reads at {largest:,} queued (one call each, in that process): "
        f"count_queued {rss['count_queued'] * 1e3:,.0f} ms, summary {rss['summary'] * 1e3:,.0f} "
        f"ms, queue_position of the newest job {rss['queue_position'] * 1e3:,.0f} ms.",
        "",
        "| goal | measured | met |",
        "|---|---:|:---:|",
        f"| ≥ 2,000 sync enqueues/s | {enqueue['sqlite']:,.0f} | "
        f"{'yes' if enqueue['sqlite'] >= 2000 else 'NO'} |",
        f"| ≥ 1,000 claim→done cycles/s | {cycles['sqlite']:,.0f} | "
        f"{'yes' if cycles['sqlite'] >= 1000 else 'NO'} |",
        f"| p50 at {largest:,} ≤ 2 x p50 at {smallest:,} | {growth:.2f} x | "
        f"{'yes' if growth <= 2 else 'NO'} |",
        f"| RSS < 150 MB | {peak_mib:.1f} MiB | {'yes' if peak_mib * 2**20 < 150e6 else 'NO'} |",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
