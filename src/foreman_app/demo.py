"""`foreman demo`: foreman in front of the built-in simulated Ollama, with sample jobs to watch.

One process, one event loop, two servers: the simulator on a free port and foreman (uvicorn) on
FOREMAN_LISTEN_ADDR (127.0.0.1:8080 by default, any free port if that one is taken). The demo
submits sample async jobs that alternate between two models and prints their state changes as
they happen, so the drain-by-model order shows: the jobs arrive A B A B … and run A A … B B ….
SIGINT (Ctrl-C) or SIGTERM stops foreman first (its graceful shutdown), then the simulator;
the exit status is 0.

Every FOREMAN_* variable is honoured except FOREMAN_OLLAMA_URL, which is always the simulator.
Unless set, the database is a temporary file deleted at the end, the inventory is polled every
second (so `foreman ps` follows the swaps), the log level is `warning` (so request logs do not
bury the demo's own lines) and the shutdown grace is 3 s (so Ctrl-C stops it promptly).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import uvicorn

from foreman_adapters.simulator import SimulatedOllama, serve_simulator
from foreman_app.app import create_app
from foreman_app.client import AsyncForemanClient, JobView
from foreman_app.client_errors import ClientError
from foreman_app.config import ConfigError, Settings
from foreman_app.server import (
    EXIT_BAD_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    StartupFailed,
    configured_container,
    uvicorn_config,
)
from foreman_core.job import JobState

DEMO_MODELS = ("llama3.2", "qwen2.5:0.5b")
"""The two models the sample jobs alternate between (both installed on the simulator)."""

SAMPLE_PROMPTS = (
    "Why is the sky blue?",
    "Write a haiku about a queue.",
    "Summarise Hamlet in one sentence.",
    "Name three uses for a paperclip.",
    "Explain drain-by-model scheduling to a child.",
    "What is a write-ahead log?",
    "Suggest a name for a GPU.",
    "Translate 'good morning' into French.",
)
"""One sample job per prompt; job i runs on DEMO_MODELS[i % 2]."""

DEMO_DEFAULTS = {
    "FOREMAN_LOG_LEVEL": "warning",
    "FOREMAN_POLL_INTERVAL": "1s",
    "FOREMAN_SHUTDOWN_GRACE": "3s",
}
"""Settings the demo uses unless the environment sets them."""

DEFAULT_LISTEN = ("127.0.0.1", 8080)
WATCH_INTERVAL = 0.3
"""Seconds between two looks at the job list for state changes to print."""


def demo_simulator() -> SimulatedOllama:
    """The simulated Ollama the demo runs: realistic delays, 1.5 s per model load."""
    return SimulatedOllama.realistic()


def run_demo(environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo until SIGINT/SIGTERM; the exit status (0 after a signal)."""
    env = {**DEMO_DEFAULTS, **(os.environ if environ is None else environ)}
    out = out or sys.stdout
    try:
        requested = Settings.from_env(env)
    except ConfigError as exc:
        print(f"foreman: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    fixed = bool(env.get("FOREMAN_LISTEN_ADDR", "").strip())
    try:
        listener = bind_listener(requested, fixed=fixed)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"foreman: cannot listen on {requested.listen_addr}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    moved = listener.getsockname()[1] != requested.listen_port
    surroundings = Surroundings(
        temporary_db=not env.get("FOREMAN_DB_PATH", "").strip(),
        taken_port=requested.listen_port if moved else None,
    )
    try:
        with _database(env) as db_path:
            env["FOREMAN_DB_PATH"] = db_path
            return asyncio.run(_demo(env, listener, surroundings, out))
    except StartupFailed as failure:
        print(f"foreman: {failure}", file=sys.stderr)
        return failure.status
    except KeyboardInterrupt:  # Ctrl-C before the demo's own signal handlers were in place
        return EXIT_OK
    except SystemExit as exc:  # uvicorn exits when its app fails to start
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    finally:
        listener.close()


def bind_listener(settings: Settings, *, fixed: bool) -> socket.socket:
    """A socket bound to the configured address; when it is taken and was not asked for
    explicitly (`fixed` false), one on a free port of the same host instead."""
    host, port = settings.listen_host, settings.listen_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        if fixed or exc.errno != errno.EADDRINUSE:
            raise
        return socket.create_server((host, 0), family=family)


@contextlib.contextmanager
def _database(env: Mapping[str, str]) -> Iterator[str]:
    """FOREMAN_DB_PATH when set; else a file in a temporary directory removed at the end."""
    chosen = env.get("FOREMAN_DB_PATH", "").strip()
    if chosen:
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="foreman-demo-") as directory:
        yield str(Path(directory) / "foreman.db")


class InLoopServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the demo runs it in one loop beside the
    simulator and stops both itself, foreman first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing (uvicorn would take SIGINT/SIGTERM for this server alone)."""
        yield


@contextlib.asynccontextmanager
async def serving(
    server: uvicorn.Server, sockets: list[socket.socket] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run `server` in the running loop from start-up (lifespan done, socket open) until the
    block ends; the block gets the serving task, which ends early if the server fails."""
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the server stopped while starting")
        await asyncio.sleep(0.01)
    try:
        yield task
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


async def _demo(
    env: dict[str, str], listener: socket.socket, surroundings: Surroundings, out: TextIO
) -> int:
    stop = asyncio.Event()
    servers: list[uvicorn.Server] = []
    _stop_on_signals(stop, servers)
    simulator = demo_simulator()
    async with serve_simulator(simulator) as running_simulator:
        env["FOREMAN_OLLAMA_URL"] = running_simulator.url
        env["FOREMAN_LISTEN_ADDR"] = _address(listener)
        container = configured_container(env)
        settings = container.settings()
        try:
            foreman = InLoopServer(uvicorn_config(create_app(container), settings))
            servers.append(foreman)
            async with serving(foreman, [listener]) as foreman_task:
                await _show(settings, simulator, surroundings, stop, foreman_task, out)
        finally:
            container.store().close()  # the lifespan closes it too; a second close is a no-op
    if not stop.is_set():
        print("foreman: the server stopped on its own; see the messages above", file=sys.stderr)
        return EXIT_FAILED
    _say(out, "foreman demo stopped.")
    return EXIT_OK


def _stop_on_signals(stop: asyncio.Event, servers: Sequence[uvicorn.Server]) -> None:
    """SIGINT/SIGTERM end the demo; a second one also cuts the graceful shutdowns short."""

    def on_signal() -> None:
        if stop.is_set():
            for server in servers:
                server.force_exit = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


async def _show(
    settings: Settings,
    simulator: SimulatedOllama,
    surroundings: Surroundings,
    stop: asyncio.Event,
    foreman_task: asyncio.Task[None],
    out: TextIO,
) -> None:
    """Submit the sample jobs, print the banner, narrate state changes until asked to stop."""
    url = f"http://{settings.listen_addr}"
    token = settings.auth_tokens[0] if settings.auth_tokens else None
    async with AsyncForemanClient(url, token) as client:
        seen = {job.job_id: job.state for job in await _recent_jobs(client)}
        samples = await _submit_samples(client, out)
        seen.update(dict.fromkeys(samples, str(JobState.QUEUED)))
        _say(out, banner(settings, simulator, surroundings, len(samples), foreman_command()))
        watcher = asyncio.create_task(_narrate(client, samples, seen, out))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stopped, foreman_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            stopped.cancel()
            await asyncio.gather(watcher, stopped, return_exceptions=True)
    if stop.is_set():
        _say(out, "\nstopping: foreman finishes or requeues the running job, then exits …")


async def _submit_samples(client: AsyncForemanClient, out: TextIO) -> list[str]:
    """Queue the sample jobs, alternating models; their ids (none if the server refused)."""
    ids: list[str] = []
    try:
        for number, prompt in enumerate(SAMPLE_PROMPTS):
            ids.append(await client.submit(DEMO_MODELS[number % len(DEMO_MODELS)], prompt))
    except ClientError as exc:
        _say(out, f"foreman demo: could not submit the sample jobs: {exc}")
    return ids


async def _recent_jobs(client: AsyncForemanClient) -> list[JobView]:
    """The newest jobs; none while the server cannot answer (it is stopping, or busy)."""
    try:
        return (await client.list(limit=100)).jobs
    except ClientError:
        return []


async def _narrate(
    client: AsyncForemanClient, samples: list[str], seen: dict[str, str], out: TextIO
) -> None:
    """Print each job's state changes as the job list shows them; once every sample job has
    finished, say in which order they ran."""
    summarised = not samples
    while True:
        jobs = await _recent_jobs(client)
        changed = [job for job in jobs if seen.get(job.job_id) != job.state]
        for job in sorted(changed, key=_changed_at):
            seen[job.job_id] = job.state
            _say(out, state_line(job, job.job_id in samples))
        finished = {job.job_id: job for job in jobs if job.job_id in samples and job.finished}
        if not summarised and len(finished) == len(samples):
            _say(out, drain_summary([finished[job_id] for job_id in samples]))
            summarised = True
        await asyncio.sleep(WATCH_INTERVAL)


def _changed_at(job: JobView) -> tuple[datetime, str]:
    """When the job reached its current state, as near as its timestamps tell."""
    moment = job.finished_at or job.started_at or job.created_at
    return (moment or datetime.min.replace(tzinfo=UTC), job.job_id)


def state_line(job: JobView, sample: bool) -> str:
    """One narrated state change: local time, job id, model, new state."""
    when = datetime.now().strftime("%H:%M:%S")
    who = "" if sample else f"  (priority {job.priority})"
    error = f": {job.error}" if job.error and job.state == JobState.FAILED else ""
    return f"  {when}  {job.job_id}  {job.model:<18} {job.state}{error}{who}"


def model_runs(jobs: Iterable[JobView]) -> list[tuple[str, int]]:
    """The models of the jobs that ran, in the order they started, consecutive repeats counted:
    `[("llama3.2:latest", 4), ("qwen2.5:0.5b", 4)]`. Jobs that never started are left out."""
    started = sorted(
        (job for job in jobs if job.started_at is not None),
        key=lambda job: (job.started_at, job.job_id),
    )
    runs: list[tuple[str, int]] = []
    for job in started:
        if runs and runs[-1][0] == job.model:
            runs[-1] = (job.model, runs[-1][1] + 1)
        else:
            runs.append((job.model, 1))
    return runs


def drain_summary(jobs: Sequence[JobView]) -> str:
    """What the finished sample jobs show: they arrived alternating models and ran grouped."""
    runs = model_runs(job for job in jobs if job.state == JobState.DONE)
    done = sum(count for _, count in runs)
    order = ", then ".join(f"{count} on {model}" for model, count in runs)
    lines = [
        f"\nThe {len(jobs)} sample jobs arrived alternating {' and '.join(DEMO_MODELS)};",
        f"the {done} that completed ran grouped by model: {order}.",
        f"That is {len(runs)} model loads, where serving them in arrival order costs one per job.",
    ]
    others = [job for job in jobs if job.state != JobState.DONE]
    if others:
        lines.append(f"{len(others)} did not complete: " + ", ".join(j.state for j in others))
    return "\n".join(lines)


def foreman_command() -> str:
    """How to run this installation's `foreman` from another terminal."""
    beside = Path(sys.executable).with_name("foreman")
    on_path = shutil.which("foreman")
    if on_path and beside.exists() and Path(on_path).resolve() == beside.resolve():
        return "foreman"
    if beside.exists():
        return str(beside)
    return f"{sys.executable} -m foreman_app"


@dataclass(frozen=True, slots=True)
class Surroundings:
    """What the banner tells besides the settings: where the database and the port came from."""

    temporary_db: bool
    taken_port: int | None
    """The port that was asked for by default but taken, when the demo moved to a free one."""


def banner(
    settings: Settings,
    simulator: SimulatedOllama,
    surroundings: Surroundings,
    samples: int,
    foreman: str,
) -> str:
    """What the demo prints once it is up: where things are and what to try."""
    url = f"http://{settings.listen_addr}"
    models = ", ".join(model["name"] for model in simulator.library.tags()["models"])
    taken = surroundings.taken_port
    chat = (
        '{"model": "llama3.2", "messages": [{"role": "user", "content": "Hi!"}], "stream": false}'
    )
    python = (
        "import ollama; print(ollama.chat(model='llama3.2', "
        "messages=[{'role': 'user', 'content': 'Why is the sky blue?'}]).message.content)"
    )
    lines = [
        "",
        "foreman demo: foreman in front of a simulated Ollama (no GPU, no Ollama needed)",
        "",
        f"  foreman           {url}" + (f"  (port {taken} was taken)" if taken else ""),
        f"  simulated Ollama  {settings.ollama_url}  ({simulator.load_delay:g} s per model load)",
        f"  models            {models}",
        f"  database          {settings.db_path}"
        + ("  (temporary: deleted when the demo stops)" if surroundings.temporary_db else ""),
    ]
    if settings.auth_tokens:
        lines.append("  auth              on: send 'Authorization: Bearer <FOREMAN_AUTH_TOKEN>'")
    lines += [
        "",
        "Try it from another terminal, as you would use Ollama:",
        "",
        f"  export OLLAMA_HOST={url} FOREMAN_URL={url}",
        "",
        "  # the official Python client (pip install ollama); the ollama CLI reads OLLAMA_HOST too",
        f'  python -c "{python}"',
        "",
        f"  curl -s {url}/api/chat -d '{chat}'",
        "",
        f"  {foreman} ps       # the resident model, the running job, the queue per model",
        f"  {foreman} jobs     # every job, newest first",
        f'  {foreman} submit -m qwen2.5:0.5b --wait "Write a haiku about queues"',
        "",
        f"{samples} sample jobs were submitted, alternating {' and '.join(DEMO_MODELS)}.",
        "Watch them drain by model (Ctrl-C stops the demo):",
        "",
    ]
    return "\n".join(lines)


def _address(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)
