"""What each candidate transport to Ollama costs per relayed embed request (ADR 0017).

Usage: python bench/bench_transports.py [--seconds N] [--rounds R] [--clients C]
       [--relay-seconds S] [--only NAME ...] [--relay-only]

The candidates are in bench/_transports.py. One simulated Ollama process (no delays), then:

1. The relay alone. This process (on uvloop, as foreman runs) sends `POST /api/embed` through
   `OllamaTarget.relay` over each transport, C requests at a time (default 8), S seconds per
   transport (default 4) in R interleaved slices (ABC CBA ..., default 4): this process's CPU
   per request, which is the transport's cost plus the same small loop for each.
2. Through `foreman serve`. One foreman per transport (default settings, access log on) in
   front of the simulator, hammered as bench_passthrough.py does it (C keep-alive connections,
   N seconds per target, default 8, in R interleaved slices): throughput beside the simulator's
   and foreman's CPU per request, the figure of the goal (at most 500 µs).

Every process shares the machine's cores: the "other processes' cores" column says how much
of them the rest of the machine took meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Foreman, Simulator, machine
from _transports import candidates
from bench_passthrough import (
    EMBED_BODY,
    SIMULATOR_ARGS,
    Target,
    interleaved,
    load_table,
    measure_passthrough,
    passthrough_table,
)

from foreman_adapters.ollama import OllamaTarget

GOAL_CPU_US = 500.0
WARM_UP_REQUESTS = 200


async def relay_slice(target: OllamaTarget, clients: int, seconds: float) -> tuple[int, float]:
    """Requests relayed in `seconds` by `clients` concurrent loops, and the CPU seconds spent."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with target.relay("POST", "/api/embed", EMBED_BODY) as response:
                async for _ in response.chunks():
                    pass
            if response.status != 200:
                raise RuntimeError(f"the simulator answered {response.status}")
            done += 1

    began = time.process_time()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return done, time.process_time() - began


async def relay_alone(
    url: str, names: list[str], clients: int, seconds: float, rounds: int
) -> dict[str, float]:
    """CPU µs per relayed request of this process, for each transport."""
    made = candidates()
    transports = {name: made[name]() for name in names}
    targets = {name: OllamaTarget(transport, url) for name, transport in transports.items()}
    totals = {name: [0, 0.0] for name in names}
    try:
        for target in targets.values():
            for _ in range(WARM_UP_REQUESTS // clients):
                await relay_slice(target, clients, 0.0)
            await relay_slice(target, clients, 0.2)
        for number in range(rounds):
            order = names if number % 2 == 0 else list(reversed(names))
            for name in order:
                requests, cpu = await relay_slice(targets[name], clients, seconds / rounds)
                totals[name][0] += requests
                totals[name][1] += cpu
    finally:
        for transport in transports.values():
            await transport.aclose()
    return {name: cpu / requests * 1e6 for name, (requests, cpu) in totals.items()}


def arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per foreman (default 8)")
    parser.add_argument("--relay-seconds", type=float, default=4.0, help="per transport, part 1")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved slices per target")
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests")
    parser.add_argument("--only", nargs="*", help="transport names (default: every candidate)")
    parser.add_argument("--relay-only", action="store_true", help="part 1 only")
    return parser.parse_args()


def main() -> None:
    """Both measurements, printed as markdown."""
    args = arguments()
    names = args.only or list(candidates())
    about = machine()
    print(f"- CPU: {about['cpu']}, nproc {about['nproc']}")
    print(f"- Python {about['python']}, Linux {about['kernel']}")
    print(f"- load average before the run: {about['loadavg']}")
    print(f"- transports: {', '.join(names)}\n")
    with Simulator(*SIMULATOR_ARGS) as simulator:
        relay = uvloop.run(
            relay_alone(simulator.url, names, args.clients, args.relay_seconds, args.rounds)
        )
        print(f"1. The relay alone, {args.clients} at a time, CPU µs per request:\n")
        print("| transport | CPU µs/request |\n|---|---:|")
        for name, cpu in relay.items():
            print(f"| {name} | {cpu:,.0f} |")
        if args.relay_only:
            return
        launcher = str(Path(__file__).parent / "_transports.py")
        servers = {name: Foreman(simulator.url, command=(launcher, name)) for name in names}
        try:
            for server in servers.values():
                server.start()
            targets = [Target("simulator directly", simulator.url, {})] + [
                Target(f"foreman over {name}", server.url, {"foreman": server.pid})
                for name, server in servers.items()
            ]
            totals = measure_passthrough(
                targets, simulator.pid, args.clients, args.seconds, args.rounds
            )
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"\n2. Through `foreman serve`, {args.clients} keep-alive connections, {args.seconds:g} s"
        f" per target in {args.rounds} interleaved slices (order: "
        f"{', '.join(t.label for t in interleaved(targets, 2))}):\n"
    )
    print(passthrough_table(totals))
    print("\nAverage cores busy during those slices:\n")
    print(load_table(totals))
    print(f"\nload average after the run: {machine()['loadavg']}")
    print(f"\n| foreman over | CPU µs/request | ≤ {GOAL_CPU_US:g} µs |\n|---|---:|:---:|")
    for total in totals[1:]:
        cpu = total.cpu_us_per_request("foreman")
        label = total.target.label.removeprefix("foreman over ")
        print(f"| {label} | {cpu:,.0f} | {'yes' if cpu <= GOAL_CPU_US else 'NO'} |")


if __name__ == "__main__":
    main()
