"""What a relay through foreman costs, hot and cold, next to what a queued chat costs.

Usage: python bench/bench_relay_floor.py [--requests N]

One simulator (20 ms to the first token, 5 tokens 10 ms apart, as in bench_queued.py) and one
`foreman serve` in front of it. One keep-alive connection per batch, the bare client of
bench_queued.py, the two targets in alternating slices (ABBA…):

- `POST /api/embed` back to back: the passthrough route, no queue, job or store;
- the same embeds 60 ms apart, as the chats of bench_queued.py arrive (a process that has
  slept runs its next request several times slower on a shared VM);
- non-streamed `POST /api/chat` back to back, through the queue (each takes ~60 ms).

Prints each median and what foreman adds to it. No goal: this is the yardstick for
bench_queued.py's "under 1 ms added".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Foreman, Simulator, machine
from bench_queued import LATENCY_MODEL, TOKEN_DELAY, TOKENS, TTFT, Connection, chat_body

SLICES = 6
DROPPED = 2
"""Requests at the head of each batch left out: a new connection's first ones."""
GAP = 0.06
EMBED = json.dumps({"model": "all-minilm", "input": "the quick brown fox " * 5}).encode()


def batch(url: str, path: str, body: bytes, count: int, gap: float) -> list[float]:
    """Seconds per request for `count` requests on one connection, `gap` apart."""
    connection = Connection(url)
    try:
        latencies = []
        for _ in range(count):
            answer = connection.post(path, body)
            if answer.status != 200:
                raise RuntimeError(f"{url}{path} answered {answer.status}")
            latencies.append(answer.latency)
            if gap:
                time.sleep(gap)
        return latencies[DROPPED:]
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per slice and kind")
    args = parser.parse_args()
    kinds = {
        "embed, back to back": ("/api/embed", EMBED, args.requests * 4, 0.0),
        "embed, 60 ms apart": ("/api/embed", EMBED, args.requests, GAP),
        "queued chat, back to back": (
            "/api/chat",
            chat_body(LATENCY_MODEL, "hi", stream=False),
            args.requests,
            0.0,
        ),
    }
    about = machine()
    print(f"- CPU: {about['cpu']}, nproc {about['nproc']}")
    print(f"- Python {about['python']}, Linux {about['kernel']}")
    print(f"- load average before the run: {about['loadavg']}")
    delays = ("--load-delay", "0", "--ttft", str(TTFT), "--token-delay", str(TOKEN_DELAY))
    with Simulator(*delays, "--tokens", str(TOKENS)) as simulator, Foreman(simulator.url) as fm:
        targets = {"simulator": simulator.url, "foreman": fm.url}
        results: dict[tuple[str, str], list[float]] = {}
        for index in range(SLICES):
            order = list(targets) if index % 2 == 0 else list(reversed(targets))
            for label in order:
                for kind, (path, body, count, gap) in kinds.items():
                    results.setdefault((label, kind), []).extend(
                        batch(targets[label], path, body, count, gap)
                    )
    print("\n| requests | simulator | through foreman | added |\n|---|---:|---:|---:|")
    for kind in kinds:
        direct = statistics.median(results[("simulator", kind)])
        relayed = statistics.median(results[("foreman", kind)])
        print(
            f"| {kind} | {direct * 1000:.2f} ms | {relayed * 1000:.2f} ms"
            f" | {(relayed - direct) * 1000:.2f} ms |"
        )


if __name__ == "__main__":
    main()
