"""Benchmark of foreman's passthrough: `POST /api/embed` through foreman against the target itself.

Usage: python bench/bench_passthrough.py [--seconds N] [--rounds R] [--clients C]
       [--latency-seconds L] [--starts K] [--skip-startup]

1. Embedding passthrough. One simulated Ollama process and `foreman serve` processes in front of
   it; C keep-alive connections (default 8) post embed requests as fast as answers come back, for
   N seconds per target (default 10), split into R interleaved slices (ABC CBA ..., default 4)
   so that drift of a shared machine falls on every target alike; then the same with one
   connection for L seconds per target (default 5), where latency is not queueing. Targets: the
   simulator directly, foreman as configured by default (access log on), and foreman with
   FOREMAN_LOG_LEVEL=warning. The client is a minimal HTTP/1.1 client on asyncio streams, so that
   it costs far less CPU per request than either server; each process's CPU time per request,
   and the CPU other processes on the machine took meanwhile, are reported beside the throughput
   because everything shares the machine's cores.
2. Idle RSS (VmRSS, VmHWM) of `foreman serve` after start-up and a few requests.
3. Start-up time to the first 200 from /healthz, median of K starts (default 5), with the
   simulator as target, with a target that refuses connections, and with one that never answers.

Prints markdown tables and checks the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    Foreman,
    Simulator,
    cpu_seconds,
    free_port,
    machine,
    machine_busy_seconds,
    memory_kib,
)

EMBED_MODEL = "all-minilm"
EMBED_BODY = json.dumps({"model": EMBED_MODEL, "input": "Why is the sky blue? " * 4}).encode()
SIMULATOR_ARGS = ("--load-delay", "0", "--ttft", "0", "--token-delay", "0", "--tokens", "8")
WARM_UP_SECONDS = 1.0
FEW_REQUESTS = 20
GOAL_RATIO = 0.9
GOAL_ADDED_P50_MS = 1.0
GOAL_RSS_MIB = 80.0


# -- a client that costs little ----------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that posts the same request again and again.

    Deliberately bare (no header objects, no URL parsing per request): the benchmark must measure
    the servers, not its own client.
    """

    def __init__(self, url: str, path: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect, with Nagle off as every HTTP client does."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self) -> tuple[int, bytes]:
        """Send the request; the response's status and body."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return status, await self._read_chunked()
        if length < 0:
            raise RuntimeError("a response without a length would end the connection")
        return status, await self.reader.readexactly(length)

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


@dataclass
class Slice:
    """What C clients achieved against one target in one timed slice."""

    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


async def hammer(url: str, clients: int, seconds: float) -> Slice:
    """C connections posting embed requests back to back for `seconds`; their latencies."""
    connections = [HttpConnection(url, "/api/embed", EMBED_BODY) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in connections))
    result = Slice()
    deadline = time.perf_counter() + seconds

    async def loop(connection: HttpConnection) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter_ns()
            status, body = await connection.post()
            elapsed = time.perf_counter_ns() - began
            if status == 200 and body.startswith(b"{"):
                result.latencies_ns.append(elapsed)
                result.requests += 1
            else:
                result.failures += 1

    began = time.perf_counter()
    try:
        await asyncio.gather(*(loop(c) for c in connections))
    finally:
        result.seconds = time.perf_counter() - began
        await asyncio.gather(*(c.close() for c in connections))
    return result


def check_embedding(url: str) -> None:
    """One request through the full client stack: the answer is a real embedding."""
    answer = httpx.post(f"{url}/api/embed", content=EMBED_BODY, timeout=10).json()
    vectors = answer.get("embeddings")
    if not vectors or len(vectors[0]) < 2:
        raise RuntimeError(f"{url} did not answer an embedding: {answer}")


@contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each process spends inside the block (the client is this process), and
    "others": what the rest of the machine spent meanwhile."""
    spent: dict[str, float] = {}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_before = machine_busy_seconds()
    yield spent
    for name, pid in pids.items():
        spent[name] = cpu_seconds(pid) - before[name]
    # Work of processes outside the benchmark (other jobs on a shared machine) skews a slice.
    spent["others"] = max(0.0, machine_busy_seconds() - machine_before - sum(spent.values()))


# -- the passthrough measurement ---------------------------------------------------------------


@dataclass
class Target:
    """One place the clients send their requests to, with the processes that serve them."""

    label: str
    url: str
    server_pids: dict[str, int]


@dataclass
class Totals:
    """Every slice against one target, merged."""

    target: Target
    slices: list[Slice] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Successful requests."""
        return sum(s.requests for s in self.slices)

    @property
    def failures(self) -> int:
        """Requests that did not get a 200 with a JSON body."""
        return sum(s.failures for s in self.slices)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.requests / sum(s.seconds for s in self.slices)

    def percentile_ms(self, fraction: float) -> float:
        """A latency percentile, in milliseconds."""
        merged = sorted(n for s in self.slices for n in s.latencies_ns)
        index = min(len(merged) - 1, round(fraction * (len(merged) - 1)))
        return merged[index] / 1e6

    def cpu_us_per_request(self, process: str) -> float:
        """CPU microseconds `process` spent per successful request."""
        spent = sum(s.cpu.get(process, 0.0) for s in self.slices)
        return spent / self.requests * 1e6

    def cpu_share(self, process: str) -> float:
        """Cores `process` kept busy on average (1.0 = one core)."""
        return sum(s.cpu.get(process, 0.0) for s in self.slices) / sum(
            s.seconds for s in self.slices
        )


def interleaved(targets: list[Target], rounds: int) -> list[Target]:
    """ABC CBA ABC ...: each target is as often early as late."""
    order: list[Target] = []
    for number in range(rounds):
        order.extend(targets if number % 2 == 0 else reversed(targets))
    return order


def measure_passthrough(
    targets: list[Target], simulator_pid: int, clients: int, seconds: float, rounds: int
) -> list[Totals]:
    """Run the interleaved slices; totals per target."""
    totals = {t.label: Totals(t) for t in targets}
    for target in targets:
        check_embedding(target.url)
        asyncio.run(hammer(target.url, clients, WARM_UP_SECONDS))
    for target in interleaved(targets, rounds):
        pids = {"simulator": simulator_pid, "client": os.getpid(), **target.server_pids}
        with cpu_meter(pids) as spent:
            result = asyncio.run(hammer(target.url, clients, seconds / rounds))
        result.cpu = spent
        totals[target.label].slices.append(result)
    return list(totals.values())


def passthrough_table(totals: list[Totals]) -> str:
    """One row per target: throughput, latency and CPU per request of each process."""
    direct = totals[0]
    lines = [
        "| target | req/s | ratio | p50 ms | p99 ms | added p50 ms | "
        "CPU µs/req simulator | CPU µs/req foreman | CPU µs/req client | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for total in totals:
        foreman_cpu = (
            f"{total.cpu_us_per_request('foreman'):,.0f}"
            if "foreman" in total.target.server_pids
            else "—"
        )
        lines.append(
            f"| {total.target.label} | {total.throughput:,.0f} "
            f"| {total.throughput / direct.throughput:.2f} "
            f"| {total.percentile_ms(0.5):.2f} | {total.percentile_ms(0.99):.2f} "
            f"| {total.percentile_ms(0.5) - direct.percentile_ms(0.5):+.2f} "
            f"| {total.cpu_us_per_request('simulator'):,.0f} | {foreman_cpu} "
            f"| {total.cpu_us_per_request('client'):,.0f} | {total.failures} |"
        )
    return "\n".join(lines)


def load_table(totals: list[Totals]) -> str:
    """How many cores each process kept busy: shows who was the bottleneck, and how much of the
    machine other work took meanwhile."""
    lines = [
        "| target | simulator cores | foreman cores | client cores | other processes' cores |",
        "|---|---:|---:|---:|---:|",
    ]
    for total in totals:
        foreman = (
            f"{total.cpu_share('foreman'):.2f}" if "foreman" in total.target.server_pids else "—"
        )
        lines.append(
            f"| {total.target.label} | {total.cpu_share('simulator'):.2f} | {foreman} "
            f"| {total.cpu_share('client'):.2f} | {total.cpu_share('others'):.2f} |"
        )
    return "\n".join(lines)


# -- memory and start-up -----------------------------------------------------------------------


def idle_memory(simulator_url: str) -> dict[str, int]:
    """VmRSS/VmHWM of a fresh `foreman serve` after start-up, then after a few requests."""
    with Foreman(simulator_url) as server:
        time.sleep(0.5)  # let start-up's last allocations settle before reading
        after_start = memory_kib(server.pid)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(FEW_REQUESTS):
                client.post("/api/embed", content=EMBED_BODY).raise_for_status()
                client.get("/api/tags").raise_for_status()
                client.get("/healthz").raise_for_status()
            chat = {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]}
            client.post("/api/chat", json={**chat, "stream": False}).raise_for_status()
            client.post("/api/chat", json=chat).raise_for_status()
        time.sleep(0.5)
        after_requests = memory_kib(server.pid)
    return {
        "rss_start": after_start["VmRSS"],
        "hwm_start": after_start["VmHWM"],
        "rss_idle": after_requests["VmRSS"],
        "hwm_idle": after_requests["VmHWM"],
    }


def unanswering_target() -> tuple[socket.socket, str]:
    """A listening socket that never accepts: connects succeed (backlog) but nothing answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


def start_up_times(target: str, starts: int) -> tuple[list[float], bool]:
    """Seconds from spawn to a healthy /healthz for `starts` fresh servers; whether degraded."""
    times: list[float] = []
    degraded = False
    for _ in range(starts):
        with Foreman(target) as server:
            times.append(server.started_in)
            degraded = httpx.get(f"{server.url}/healthz", timeout=5).json().get("degraded", False)
    return times, degraded


def start_up_table(rows: list[tuple[str, list[float], bool]]) -> str:
    """Median, min and max start-up time per kind of target."""
    lines = [
        "| target | median s | min s | max s | /healthz degraded |",
        "|---|---:|---:|---:|:---:|",
    ]
    for label, times, degraded in rows:
        lines.append(
            f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} "
            f"| {max(times):.2f} | {'yes' if degraded else 'no'} |"
        )
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per target (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved slices per target")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="per target with one client"
    )
    parser.add_argument("--starts", type=int, default=5, help="start-ups timed per target kind")
    parser.add_argument("--skip-startup", action="store_true", help="passthrough and RSS only")
    return parser.parse_args()


def goal_line(name: str, measured: str, met: bool) -> str:
    """One row of the goals table."""
    return f"| {name} | {measured} | {'yes' if met else 'NO'} |"


def run_passthrough(
    simulator: Simulator, args: argparse.Namespace
) -> tuple[list[Totals], list[Totals]]:
    """Both passthrough measurements, printed; the default foreman's totals under load and
    with one client, each beside the direct figures (index 0)."""
    with (
        Foreman(simulator.url) as default,
        Foreman(simulator.url, {"FOREMAN_LOG_LEVEL": "warning"}) as quiet,
    ):
        targets = [
            Target("simulator directly", simulator.url, {}),
            Target("foreman (defaults)", default.url, {"foreman": default.pid}),
            Target("foreman, log level warning", quiet.url, {"foreman": quiet.pid}),
        ]
        loaded = measure_passthrough(
            targets, simulator.pid, args.clients, args.seconds, args.rounds
        )
        single = measure_passthrough(targets, simulator.pid, 1, args.latency_seconds, args.rounds)
    for totals, clients, seconds in (
        (loaded, args.clients, args.seconds),
        (single, 1, args.latency_seconds),
    ):
        print(
            f"Embedding passthrough, {clients} keep-alive connection(s), {seconds:g} s per target "
            f"in {args.rounds} interleaved slices, `POST /api/embed` ({EMBED_MODEL}, 384 dims):\n"
        )
        print(passthrough_table(totals))
        print("\nAverage cores busy during those slices:\n")
        print(load_table(totals))
        print()
    return loaded, single


def main() -> None:
    """Run every measurement and print the report."""
    args = arguments()
    about = machine()
    print(f"- CPU: {about['cpu']}, nproc {about['nproc']}")
    print(f"- Python {about['python']}, Linux {about['kernel']}")
    print(f"- load average before the run: {about['loadavg']}\n")

    with Simulator(*SIMULATOR_ARGS) as simulator:
        loaded, single = run_passthrough(simulator, args)
        memory = idle_memory(simulator.url)
        print(
            "`foreman serve` memory: after start-up VmRSS "
            f"{memory['rss_start'] / 1024:.1f} MiB (VmHWM {memory['hwm_start'] / 1024:.1f} MiB); "
            f"idle after {FEW_REQUESTS} embed/tags/healthz rounds and two chats VmRSS "
            f"{memory['rss_idle'] / 1024:.1f} MiB (VmHWM {memory['hwm_idle'] / 1024:.1f} MiB)"
        )
        if not args.skip_startup:
            rows = [("simulator", *start_up_times(simulator.url, args.starts))]
            refused = f"http://127.0.0.1:{free_port()}"
            rows.append(("refused (closed port)", *start_up_times(refused, args.starts)))
            listener, silent = unanswering_target()
            with listener:
                rows.append(("silent (accepts, never answers)", *start_up_times(silent, 1)))
            print(f"\nStart-up to a 200 from /healthz ({args.starts} starts each; silent: 1):\n")
            print(start_up_table(rows))
    print(f"\nload average after the run: {machine()['loadavg']}")
    print_goals(loaded, single, memory, args.clients)


def print_goals(
    loaded: list[Totals], single: list[Totals], memory: dict[str, int], clients: int
) -> None:
    """The goals of the task, met or not (foreman with its default settings)."""
    ratio = loaded[1].throughput / loaded[0].throughput
    print("\n| goal | measured | met |\n|---|---:|:---:|")
    print(goal_line(f"throughput ratio ≥ {GOAL_RATIO}", f"{ratio:.2f}", ratio >= GOAL_RATIO))
    for totals, connections in ((loaded, clients), (single, 1)):
        added = totals[1].percentile_ms(0.5) - totals[0].percentile_ms(0.5)
        print(
            goal_line(
                f"added p50 ≤ {GOAL_ADDED_P50_MS:g} ms ({connections} connection(s))",
                f"{added:.2f} ms",
                added <= GOAL_ADDED_P50_MS,
            )
        )
    rss = memory["rss_idle"] / 1024
    print(goal_line(f"idle RSS < {GOAL_RSS_MIB:g} MB", f"{rss:.1f} MiB", rss < GOAL_RSS_MIB))


if __name__ == "__main__":
    main()
