"""Benchmark of foreman's queued inference: `/api/chat` through the queue and the single worker.

Usage: python bench/bench_queued.py [--quick] [--requests N] [--stream-requests N]
       [--backlog N] [--load-delay S] [--seed S]

1. Latency. One simulated Ollama (20 ms to the first token, 5 tokens 10 ms apart) and one
   `foreman serve` in front of it. One keep-alive connection sends non-streamed chats one after
   the other, N to each target (default 300), in interleaved slices (ABBA…) so that drift of a
   shared machine falls on both alike: p50/p99 latency and foreman's ratio to the simulator.
2. Streaming. The same with `stream: true` (default 150 each): time to the first body chunk
   and the mean gap between chunks as the client receives them, through foreman and direct.
3. Scheduling. A second simulator with a 2 s load delay per model swap: a backlog of B async
   jobs (default 200) over 4 models in random order, submitted to `POST /jobs` at once, against
   first come, first served (what Ollama does: the same requests sent straight to the simulator
   one at a time in submission order). Swaps (the simulator's counter) and makespan (first
   submission to last completion).

`--quick` runs a smoke-sized version (fewer requests, a 40-job backlog, 0.5 s loads).
Prints markdown and checks the goals. The client is a bare blocking HTTP/1.1 client so that
its own cost is small and the same for both targets.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Foreman, Simulator, machine

TTFT, TOKEN_DELAY, TOKENS = 0.02, 0.01, 5
MODELS = ("llama3.2", "qwen2.5:0.5b", "gemma3:1b", "qwen3:0.6b")
LATENCY_MODEL = "llama3.2"
WARM_UP = 10
SLICES = 6
GOAL_LATENCY_RATIO = 1.05
GOAL_ADDED_MS = 1.5
GOAL_TTFB_RATIO = 1.08
GOAL_MAKESPAN_SHARE = 0.15


# -- a client that costs little ----------------------------------------------------------------


@dataclass
class Answer:
    """One response: status, body, and when (perf_counter seconds) each body chunk arrived."""

    status: int
    body: bytes
    sent_at: float
    chunk_times: list[float] = field(default_factory=list)

    @property
    def latency(self) -> float:
        """Seconds from sending the request to the last byte of the response."""
        return self.chunk_times[-1] - self.sent_at

    @property
    def first_byte(self) -> float:
        """Seconds from sending the request to the first body chunk."""
        return self.chunk_times[0] - self.sent_at

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive body chunks."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


class Connection:
    """One keep-alive HTTP/1.1 connection, blocking, Nagle off; reads chunked bodies per chunk."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.netloc = parts.netloc
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = self.sock.makefile("rb")

    def post(self, path: str, body: bytes) -> Answer:
        """Send one POST and read its whole response, timing each body chunk."""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sent_at = time.perf_counter()
        self.sock.sendall(request)
        status = int(self.stream.readline().split(b" ", 2)[1])
        length, chunked = -1, False
        while (line := self.stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        answer = Answer(status, b"", sent_at)
        if chunked:
            parts = []
            while size := int(self.stream.readline().split(b";")[0], 16):
                parts.append(self.stream.read(size))
                answer.chunk_times.append(time.perf_counter())
                self.stream.read(2)
            self.stream.readline()
            answer.body = b"".join(parts)
        else:
            answer.body = self.stream.read(length)
            answer.chunk_times.append(time.perf_counter())
        return answer

    def close(self) -> None:
        """Close the connection."""
        self.stream.close()
        self.sock.close()


def chat_body(model: str, prompt: str, *, stream: bool) -> bytes:
    """An Ollama chat request with one user message."""
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()


# -- latency and streaming ---------------------------------------------------------------------


def run_requests(url: str, count: int, *, stream: bool, tag: str) -> list[Answer]:
    """`count` chats one after the other on one connection; every answer must be 200."""
    connection = Connection(url)
    try:
        answers = []
        for n in range(count):
            answer = connection.post(
                "/api/chat", chat_body(LATENCY_MODEL, f"{tag} {n}", stream=stream)
            )
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}: {answer.body[:200]!r}")
            answers.append(answer)
        return answers
    finally:
        connection.close()


def interleaved(targets: dict[str, str], count: int, *, stream: bool) -> dict[str, list[Answer]]:
    """`count` requests per target in SLICES slices, ABBA…, after a warm-up on each."""
    for label, url in targets.items():
        run_requests(url, WARM_UP, stream=stream, tag=f"warm {label}")
    answers: dict[str, list[Answer]] = {label: [] for label in targets}
    order = list(targets)
    per_slice = max(1, count // SLICES)
    for index in range(SLICES):
        for label in order if index % 2 == 0 else reversed(order):
            answers[label] += run_requests(
                targets[label], per_slice, stream=stream, tag=f"{label} {index}"
            )
    return answers


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    """Seconds as milliseconds with two decimals."""
    return f"{seconds * 1000:.2f} ms"


# -- scheduling ----------------------------------------------------------------------------------


def backlog(size: int, seed: int) -> list[bytes]:
    """`size` chat requests over MODELS in random order (stream false), prompts all different."""
    rng = random.Random(seed)
    return [chat_body(rng.choice(MODELS), f"backlog job {n}", stream=False) for n in range(size)]


def sim_stats(simulator: Simulator) -> dict:
    """The simulator's counters."""
    return httpx.get(f"{simulator.url}/_sim/stats", timeout=10).json()


def sim_reset(simulator: Simulator) -> None:
    """Empty GPU, zero counters."""
    httpx.post(f"{simulator.url}/_sim/reset", timeout=10).raise_for_status()


@dataclass
class Schedule:
    """How one way of serving a backlog did."""

    swaps: int
    makespan: float
    submitted_in: float = 0.0


def first_come_first_served(simulator: Simulator, bodies: list[bytes]) -> Schedule:
    """Every request straight to the simulator, one at a time, in submission order."""
    sim_reset(simulator)
    connection = Connection(simulator.url)
    began = time.perf_counter()
    try:
        for body in bodies:
            if connection.post("/api/chat", body).status != 200:
                raise RuntimeError("the simulator refused a backlog request")
    finally:
        connection.close()
    return Schedule(sim_stats(simulator)["swaps"], time.perf_counter() - began)


def through_foreman(simulator: Simulator, foreman: Foreman, bodies: list[bytes]) -> Schedule:
    """Every request as an async job, submitted at once; until the simulator has run them all."""
    sim_reset(simulator)
    connection = Connection(foreman.url)
    began = time.perf_counter()
    ids = []
    try:
        for body in bodies:
            answer = connection.post("/jobs", body)
            if answer.status != 202:
                raise RuntimeError(f"POST /jobs answered {answer.status}: {answer.body!r}")
            ids.append(json.loads(answer.body)["job_id"])
    finally:
        connection.close()
    submitted_in = time.perf_counter() - began
    with httpx.Client(timeout=10) as client:
        while True:
            done = [g for g in sim_stats(simulator)["generations"] if g["outcome"] == "done"]
            if len(done) >= len(bodies):
                break
            time.sleep(0.01)
        makespan = time.perf_counter() - began
        finished = client.get(f"{foreman.url}/jobs", params={"state": "done", "limit": "1000"})
        if len(finished.json()["jobs"]) < len(ids):
            raise RuntimeError("foreman's jobs are not all done")
    return Schedule(sim_stats(simulator)["swaps"], makespan, submitted_in)


# -- the run -------------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run")
    parser.add_argument("--requests", type=int, default=300, help="non-streamed chats per target")
    parser.add_argument("--stream-requests", type=int, default=150, help="streamed per target")
    parser.add_argument("--backlog", type=int, default=200, help="async jobs in the backlog")
    parser.add_argument("--load-delay", type=float, default=2.0, help="seconds per model swap")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.stream_requests = 60, 30
        args.backlog, args.load_delay = 40, 0.5
    return args


def simulator_args(load_delay: float) -> tuple[str, ...]:
    """The simulator's delays for this benchmark."""
    return (
        *("--load-delay", str(load_delay), "--ttft", str(TTFT)),
        *("--token-delay", str(TOKEN_DELAY), "--tokens", str(TOKENS)),
    )


def goal_line(goal: str, measured: str, met: bool) -> str:
    """One row of the goals table."""
    return f"| {goal} | {measured} | {'yes' if met else 'NO'} |"


def report_latency(answers: dict[str, list[Answer]]) -> list[str]:
    """Print the non-streamed latency table; the goal rows."""
    latencies = {label: [a.latency for a in got] for label, got in answers.items()}
    p50 = {label: statistics.median(values) for label, values in latencies.items()}
    p99 = {label: percentile(values, 0.99) for label, values in latencies.items()}
    print(
        f"Non-streamed chat, one connection, sequential ({len(latencies['foreman'])} per "
        f"target; ttft {TTFT * 1000:g} ms, {TOKENS} tokens {TOKEN_DELAY * 1000:g} ms apart):\n"
    )
    print("| target | p50 | p99 | mean |\n|---|---:|---:|---:|")
    for label, values in latencies.items():
        mean = statistics.mean(values)
        print(f"| {label} | {ms(p50[label])} | {ms(p99[label])} | {ms(mean)} |")
    ratio_p50 = p50["foreman"] / p50["simulator"]
    ratio_p99 = p99["foreman"] / p99["simulator"]
    added = p50["foreman"] - p50["simulator"]
    print(f"| foreman / simulator | {ratio_p50:.3f} | {ratio_p99:.3f} | |")
    print(f"\nAdded at p50: {ms(added)}.\n")
    return [
        goal_line(
            f"p50 ratio ≤ {GOAL_LATENCY_RATIO}",
            f"{ratio_p50:.3f}",
            ratio_p50 <= GOAL_LATENCY_RATIO,
        ),
        goal_line(
            f"p99 ratio ≤ {GOAL_LATENCY_RATIO}",
            f"{ratio_p99:.3f}",
            ratio_p99 <= GOAL_LATENCY_RATIO,
        ),
        goal_line(f"added at p50 ≤ {GOAL_ADDED_MS:g} ms", ms(added), added * 1000 <= GOAL_ADDED_MS),
    ]


def report_streaming(answers: dict[str, list[Answer]]) -> list[str]:
    """Print the streaming table; the goal rows."""
    ttfb = {label: [a.first_byte for a in got] for label, got in answers.items()}
    gaps = {label: [g for a in got for g in a.gaps] for label, got in answers.items()}
    chunks = {
        label: statistics.mean(len(a.chunk_times) for a in got) for label, got in answers.items()
    }
    print(f"Streamed chat ({len(ttfb['foreman'])} per target):\n")
    print("| target | first chunk p50 | first chunk p99 | mean gap between chunks | chunks |")
    print("|---|---:|---:|---:|---:|")
    for label in answers:
        first_p50, first_p99 = statistics.median(ttfb[label]), percentile(ttfb[label], 0.99)
        gap = statistics.mean(gaps[label])
        print(f"| {label} | {ms(first_p50)} | {ms(first_p99)} | {ms(gap)} | {chunks[label]:.1f} |")
    ttfb_ratio = statistics.median(ttfb["foreman"]) / statistics.median(ttfb["simulator"])
    gap_ratio = statistics.mean(gaps["foreman"]) / statistics.mean(gaps["simulator"])
    print(f"| foreman / simulator | {ttfb_ratio:.3f} | | {gap_ratio:.3f} | |\n")
    return [
        goal_line(
            f"first-chunk p50 ratio ≤ {GOAL_TTFB_RATIO}",
            f"{ttfb_ratio:.3f}",
            ttfb_ratio <= GOAL_TTFB_RATIO,
        ),
        goal_line(
            "chunk gaps preserved (mean gap ratio within 5%)",
            f"{gap_ratio:.3f}",
            abs(gap_ratio - 1) <= 0.05,
        ),
    ]


def report_scheduling(args: argparse.Namespace, queued: Schedule, fifo: Schedule) -> list[str]:
    """Print the scheduling table; the goal rows."""
    share = queued.makespan / fifo.makespan
    print(
        f"Scheduling: {args.backlog} jobs over {len(MODELS)} models in random order "
        f"(seed {args.seed}), {args.load_delay:g} s per swap:\n"
    )
    print("| served by | swaps | makespan |\n|---|---:|---:|")
    print(f"| foreman (async jobs, drain-by-model) | {queued.swaps} | {queued.makespan:.1f} s |")
    print(f"| first come, first served (direct) | {fifo.swaps} | {fifo.makespan:.1f} s |")
    print(
        f"\nforeman's makespan is {share:.1%} of FIFO's; submitting the backlog took "
        f"{queued.submitted_in:.2f} s.\n"
    )
    return [
        goal_line(f"swaps = {len(MODELS)} models", str(queued.swaps), queued.swaps == len(MODELS)),
        goal_line(
            f"makespan < {GOAL_MAKESPAN_SHARE:.0%} of FIFO's",
            f"{share:.1%}",
            share < GOAL_MAKESPAN_SHARE,
        ),
    ]


def main() -> None:
    """Run the three measurements and print markdown."""
    args = arguments()
    about = machine()
    print(f"- CPU: {about['cpu']}, nproc {about['nproc']}")
    print(f"- Python {about['python']}, Linux {about['kernel']}")
    print(f"- load average before the run: {about['loadavg']}\n")

    with Simulator(*simulator_args(0.0)) as simulator, Foreman(simulator.url) as foreman:
        targets = {"simulator": simulator.url, "foreman": foreman.url}
        whole = interleaved(targets, args.requests, stream=False)
        streamed = interleaved(targets, args.stream_requests, stream=True)
    goals = report_latency(whole) + report_streaming(streamed)

    bodies = backlog(args.backlog, args.seed)
    with Simulator(*simulator_args(args.load_delay)) as simulator:
        with Foreman(simulator.url) as foreman:
            queued = through_foreman(simulator, foreman, bodies)
        fifo = first_come_first_served(simulator, bodies)
    goals += report_scheduling(args, queued, fifo)

    print(f"load average after the run: {machine()['loadavg']}\n")
    print("| goal | measured | met |\n|---|---:|:---:|")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
