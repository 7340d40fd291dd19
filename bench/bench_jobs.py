"""Benchmark of foreman's async job API: submission rate, and webhook fan-out beside the worker.

Usage: python bench/bench_jobs.py [--quick] [--submissions N] [--rounds R] [--jobs J]

1. Acceptance. A simulated Ollama that holds every generation (so submitted jobs only queue)
   and one `foreman serve` (uvicorn, one process, FOREMAN_MAX_QUEUE high). 16 concurrent
   clients POST N chat jobs to /jobs (default 3,000); every 202 is a job made durable (fsynced)
   before the answer. Two client sides, each against a fresh server, in alternating rounds:
   a bare asyncio HTTP/1.1 client (16 keep-alive connections; a few tens of µs per request,
   so the server is what is measured) and httpx.AsyncClient (16 connections in one process:
   its own CPU per request is about the server's, so on a small machine it measures itself).
   Rates, server CPU per submission, and the client's CPU.
2. Webhook fan-out, twice: with a target that answers each job after 10 ms (shorter than any
   real model's answer; the goal is judged here) and with one that answers at once (a stress
   figure: the worker then never pauses, so deliveries wait until it does, ADR 0009). J jobs
   (default 1,000) are queued behind a hold and released at once, with and without a
   `state_webhook_url` pointing at a local receiver (its own process, a bare asyncio server
   answering 200); fresh server each time, alternating rounds. The first job is the one the
   hold catches, so it finishes at the release; the worker's throughput is the other J - 1
   over the span from its `finished_at` to the last one's (read back from GET /jobs
   afterwards, so nothing polls the server hard while it works; the first job's `started_at`
   is before the hold, and counting from it charged the wait for the queued events to the
   run). The delivery rate is the events (working, done) received after the release over the
   time to the last of them; queued events are delivered before the release, so only the run
   overlaps the deliveries.

Prints markdown and checks the goals: >= 1,000 durable submissions/s, throughput ratio >= 0.95
(10 ms target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Foreman, Simulator, clean_environment, cpu_seconds, machine

CONCURRENCY = 16
MODEL = "llama3.2"
GOAL_SUBMISSIONS = 1_000.0
GOAL_RATIO = 0.95
ZERO_DELAYS = ("--load-delay", "0", "--ttft", "0", "--token-delay", "0", "--tokens", "8")
JOB_TTFT = 0.01
"""Seconds the target waits before answering in the fan-out goal's run: a job shorter than any
real model's answer, so the worker's loop is as busy as it gets with real work."""
SERVER_ENV = {"FOREMAN_MAX_QUEUE": "1000000", "FOREMAN_LOG_LEVEL": "warning"}


def chat_body(prompt: str, webhook: str | None = None) -> bytes:
    """A POST /jobs body: one user message, and a webhook when given."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if webhook is not None:
        body["state_webhook_url"] = webhook
    return json.dumps(body).encode()


def host_port(url: str) -> tuple[str, int]:
    """`http://host:port` into its parts."""
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


# -- clients ---------------------------------------------------------------------------------


async def bare_posts(url: str, path: str, bodies: list[bytes], statuses: list[int]) -> None:
    """POST each body in turn on one keep-alive connection; record the statuses."""
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for body in bodies:
            writer.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses.append(int(head.split(b" ", 2)[1]))
    finally:
        writer.close()


async def httpx_posts(
    client: httpx.AsyncClient, path: str, bodies: list[bytes], statuses: list[int]
) -> None:
    """POST each body in turn through a shared httpx.AsyncClient."""
    for body in bodies:
        response = await client.post(path, content=body)
        statuses.append(response.status_code)


async def submit_all(url: str, bodies: list[bytes], client_kind: str) -> list[int]:
    """POST every body to /jobs from CONCURRENCY clients at once; the statuses."""
    shares = [bodies[i::CONCURRENCY] for i in range(CONCURRENCY)]
    statuses: list[int] = []
    if client_kind == "bare":
        await asyncio.gather(*(bare_posts(url, "/jobs", share, statuses) for share in shares))
        return statuses
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(httpx_posts(client, "/jobs", share, statuses) for share in shares))
    return statuses


# -- 1. acceptance ---------------------------------------------------------------------------


@dataclass
class Acceptance:
    """One timed burst of submissions."""

    client: str
    accepted: int
    seconds: float
    server_cpu: float
    client_cpu: float
    stored: int

    @property
    def rate(self) -> float:
        """Accepted submissions per second."""
        return self.accepted / self.seconds


def accept_round(sim: Simulator, client_kind: str, count: int) -> Acceptance:
    """A fresh server in front of the held simulator; `count` submissions, timed."""
    httpx.post(f"{sim.url}/_sim/reset").raise_for_status()
    httpx.post(f"{sim.url}/_sim/hold").raise_for_status()
    with Foreman(sim.url, SERVER_ENV) as server:
        # The first job reaches the held target and occupies the worker: the rest only queue.
        warm_up = [chat_body(f"warm-up {n}") for n in range(200)]
        asyncio.run(submit_all(server.url, warm_up, "bare"))
        bodies = [chat_body(f"question {n}") for n in range(count)]
        server_before, client_before = cpu_seconds(server.pid), time.process_time()
        began = time.perf_counter()
        statuses = asyncio.run(submit_all(server.url, bodies, client_kind))
        seconds = time.perf_counter() - began
        server_cpu = cpu_seconds(server.pid) - server_before
        client_cpu = time.process_time() - client_before
        stored = httpx.get(f"{server.url}/queue").json()["queued_total"] - len(warm_up) + 1
        httpx.post(f"{sim.url}/_sim/release").raise_for_status()
    accepted = statuses.count(202)
    if accepted != count:
        raise RuntimeError(f"only {accepted} of {count} submissions were accepted")
    return Acceptance(client_kind, accepted, seconds, server_cpu, client_cpu, stored)


def report_acceptance(results: list[Acceptance], count: int) -> list[str]:
    """Print the acceptance table; the goal lines."""
    print(
        f"### POST /jobs acceptance: {count:,} submissions per round, "
        f"{CONCURRENCY} concurrent clients, held target\n"
    )
    print(
        "| client side | rounds (submissions/s) | median | server CPU per submission "
        "| client CPU per submission |"
    )
    print("|---|---|---:|---:|---:|")
    medians: dict[str, float] = {}
    for kind in ("bare", "httpx"):
        runs = [r for r in results if r.client == kind]
        if not runs:
            continue
        medians[kind] = statistics.median(r.rate for r in runs)
        rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
        server_ms = statistics.median(r.server_cpu / r.accepted * 1e3 for r in runs)
        client_ms = statistics.median(r.client_cpu / r.accepted * 1e3 for r in runs)
        label = "bare asyncio HTTP/1.1" if kind == "bare" else "httpx.AsyncClient"
        print(
            f"| {label} | {rates} | {medians[kind]:,.0f} | {server_ms:.2f} ms "
            f"| {client_ms:.2f} ms |"
        )
    stored_ok = all(r.stored == r.accepted for r in results)
    print(f"\nEvery accepted job was in the queue afterwards: {'yes' if stored_ok else 'NO'}.\n")
    best = medians.get("bare", 0.0)
    return [
        f"| >= {GOAL_SUBMISSIONS:,.0f} durable submissions/s (bare client, median) "
        f"| {best:,.0f} | {'yes' if best >= GOAL_SUBMISSIONS else 'no'} |"
    ]


# -- 2. webhook fan-out ----------------------------------------------------------------------


class Receiver:
    """The webhook receiver process (this script with `--receiver`), and its records."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receiver"],
            stdout=subprocess.PIPE,
            text=True,
            env=clean_environment(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.url = line.removeprefix("listening on ").strip()

    def events(self) -> list[dict[str, Any]]:
        """Every event received so far: state, job_id, arrival (monotonic seconds)."""
        return httpx.get(f"{self.url}/events", timeout=30).json()

    def clear(self) -> None:
        """Forget the events received so far."""
        httpx.post(f"{self.url}/clear").raise_for_status()

    def stop(self) -> None:
        """End the process."""
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class FanOut:
    """One run of J jobs through the worker, with or without webhooks."""

    webhooks: bool
    jobs: int
    span: float
    server_cpu: float
    """CPU seconds of the server process from the release until every job was done."""
    events_after_release: int = 0
    events_during_run: int = 0
    """Events that reached the receiver before the worker finished its last job."""
    delivery_span: float = 0.0
    delivered_all: bool = True

    @property
    def throughput(self) -> float:
        """Jobs per second after the release: the held first job finishes at the release, the
        other J - 1 over the span from then to the last finish."""
        return (self.jobs - 1) / self.span

    @property
    def delivery_rate(self) -> float:
        """Events per second received after the release."""
        return self.events_after_release / self.delivery_span if self.delivery_span else 0.0


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition` (gently) until it is truthy; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def finished_jobs(url: str, count: int) -> list[dict[str, Any]] | None:
    """The newest `count` jobs once all of them are done (None while some are not)."""
    # GET /queue first: a listing of queued jobs computes each one's queue position.
    queue = httpx.get(f"{url}/queue", timeout=30).json()
    if queue["queued_total"] or queue["running"] is not None:
        return None
    jobs = httpx.get(f"{url}/jobs", params={"limit": count}, timeout=30).json()["jobs"]
    done = [job for job in jobs if job["state"] == "done"]
    return done if len(done) == count else None


def moment(stamp: str) -> datetime:
    """An RFC 3339 `…Z` timestamp."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def fan_out_round(
    sim: Simulator, receiver: Receiver, jobs: int, with_webhooks: bool, ttft: float = 0.0
) -> FanOut:
    """Queue `jobs` behind a hold (with webhooks or not), release, and time the run; the
    target takes `ttft` seconds before each answer."""
    httpx.post(f"{sim.url}/_sim/reset").raise_for_status()
    httpx.post(f"{sim.url}/_sim/config", json={"ttft": ttft}).raise_for_status()
    receiver.clear()
    with Foreman(sim.url, SERVER_ENV) as server:
        # One job first, so that the model is resident and every measured job is alike.
        asyncio.run(submit_all(server.url, [chat_body("warm")], "bare"))
        wait_for(lambda: finished_jobs(server.url, 1), 30, "the warm-up job")
        httpx.post(f"{sim.url}/_sim/hold").raise_for_status()
        hook = f"{receiver.url}/hook" if with_webhooks else None
        bodies = [chat_body(f"job {n}", hook) for n in range(jobs)]
        statuses = asyncio.run(submit_all(server.url, bodies, "bare"))
        assert statuses.count(202) == jobs, "submissions refused"
        if with_webhooks:
            wait_for(lambda: len(receiver.events()) >= jobs, 120, "the queued events")
        cpu_before = cpu_seconds(server.pid)
        released = time.monotonic()
        released_wall = time.time()
        httpx.post(f"{sim.url}/_sim/release").raise_for_status()
        done = wait_for(lambda: finished_jobs(server.url, jobs), 300, "the jobs", 0.05)
        server_cpu = cpu_seconds(server.pid) - cpu_before
        # The first job was claimed before the hold, so its start says nothing about the run:
        # the run is from its finish (the release) to the last finish, on the server's clock.
        released_at = min(moment(job["finished_at"]) for job in done)
        finished = max(moment(job["finished_at"]) for job in done)
        result = FanOut(with_webhooks, jobs, (finished - released_at).total_seconds(), server_cpu)
        if with_webhooks:
            expected = 3 * jobs  # queued, working, done
            events = wait_for(
                lambda: (e := receiver.events()) and len(e) >= expected and e, 300, "events"
            )
            after = [e for e in events if e["arrived"] >= released]
            result.events_after_release = len(after)
            # The receiver stamps arrivals with the (system-wide) monotonic clock.
            run_ended = released + (finished.timestamp() - released_wall)
            result.events_during_run = sum(1 for e in after if e["arrived"] <= run_ended)
            result.delivery_span = max(e["arrived"] for e in after) - released
            states = {(e["job_id"], e["state"]) for e in events}
            result.delivered_all = len(states) == expected
    return result


def report_fan_out(results: list[FanOut], jobs: int, ttft: float = 0.0) -> list[str]:
    """Print the fan-out table; the goal line (only for the target with a delay: with none,
    deliveries wait for the worker's first pause, so they hardly run beside it at all)."""
    target = "zero-delay target" if not ttft else f"target answering after {ttft * 1e3:g} ms"
    print(f"### Webhook fan-out: {jobs:,} jobs per round, {target}\n")
    print(
        "| round | worker throughput, no webhooks | with webhooks | ratio "
        "| webhook events after release | of them during the run | delivery rate "
        "| server CPU per job, without / with |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    plain = [r for r in results if not r.webhooks]
    hooked = [r for r in results if r.webhooks]
    for index, (a, b) in enumerate(zip(plain, hooked, strict=True), start=1):
        print(
            f"| {index} | {a.throughput:,.0f} jobs/s | {b.throughput:,.0f} jobs/s "
            f"| {b.throughput / a.throughput:.2f} | {b.events_after_release:,} "
            f"| {b.events_during_run:,} "
            f"| {b.delivery_rate:,.0f} events/s "
            f"| {a.server_cpu / a.jobs * 1e3:.2f} / {b.server_cpu / b.jobs * 1e3:.2f} ms |"
        )
    plain_median = statistics.median(r.throughput for r in plain)
    hooked_median = statistics.median(r.throughput for r in hooked)
    ratio = hooked_median / plain_median
    delivery = statistics.median(r.delivery_rate for r in hooked)
    complete = all(r.delivered_all for r in hooked)
    print(
        f"| median | {plain_median:,.0f} jobs/s | {hooked_median:,.0f} jobs/s | {ratio:.2f} "
        f"| | | {delivery:,.0f} events/s | |\n"
    )
    verdict = "yes" if complete else "NO"
    print(f"Every event (queued, working, done of each job) delivered: {verdict}.\n")
    if not ttft:
        return []
    return [
        f"| worker throughput with webhooks / without >= {GOAL_RATIO} | {ratio:.2f} "
        f"| {'yes' if ratio >= GOAL_RATIO else 'no'} |"
    ]


# -- the receiver process ------------------------------------------------------------------


def serve_receiver() -> None:
    """A bare asyncio HTTP/1.1 server: POST records an event; GET /events lists them."""
    events: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                answer = b""
                if method == b"POST" and path == b"/hook":
                    event = json.loads(body)
                    events.append(
                        {
                            "job_id": event["job_id"],
                            "state": event["state"],
                            "arrived": time.monotonic(),
                        }
                    )
                elif method == b"POST" and path == b"/clear":
                    events.clear()
                elif path == b"/events":
                    answer = json.dumps(events).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- main ------------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run")
    parser.add_argument("--submissions", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1_000, help="jobs per fan-out round")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.submissions, args.rounds, args.jobs = 500, 1, 100
    return args


def main() -> None:
    """Run both measurements and print markdown."""
    args = arguments()
    if args.receiver:
        serve_receiver()
        return
    about = machine()
    print(f"Command: `python bench/bench_jobs.py{' --quick' if args.quick else ''}`\n")
    print(f"- CPU: {about['cpu']}, nproc {about['nproc']}")
    print(f"- Python {about['python']}, Linux {about['kernel']}")
    print(f"- load average before the run: {about['loadavg']}\n")
    goals: list[str] = []
    with Simulator(*ZERO_DELAYS) as sim:
        accepted = []
        for _ in range(args.rounds):
            for kind in ("bare", "httpx"):
                accepted.append(accept_round(sim, kind, args.submissions))
        goals += report_acceptance(accepted, args.submissions)
        receiver = Receiver()
        try:
            for ttft in (JOB_TTFT, 0.0):
                fanned = [
                    fan_out_round(sim, receiver, args.jobs, with_webhooks, ttft)
                    for _ in range(args.rounds)
                    for with_webhooks in (False, True)
                ]
                goals += report_fan_out(fanned, args.jobs, ttft)
        finally:
            receiver.stop()
    print("| goal | measured | met |")
    print("|---|---:|:---:|")
    for line in goals:
        print(line)
    print(f"\nload average after the run: {machine()['loadavg']}")


if __name__ == "__main__":
    main()
