"""Fixtures for end-to-end tests: real `foreman serve` and simulator processes.

- `simulator`: a fresh `python -m foreman_adapters.simulator --port 0` process (no delays),
  with helpers for its control API (`stats`, `faults`, `hold`, `release`, `reset`, `configure`,
  `wait_for`) and `stop()`/`kill()`.
- `foreman_server`: a factory, `foreman_server(env=None, target=None)`, that starts
  `python -m foreman_app serve` on a free port with its own database in `tmp_path`, in front of
  `simulator` (or `target`, a URL), and waits for /healthz. The returned `ForemanServer` has
  `.url`, `.env`, `.db_path`, `.auth_headers`, `.stop(sig=SIGTERM)` (returns the exit status),
  `.kill()` (SIGKILL), `.restart()` (same port, same database), `.log()`. Every server is
  stopped after the test.
- `shared_server`: one simulator and `foreman serve` pair with default settings for the whole
  run of an xdist worker, for tests that leave both as they found them: they use prompts, job
  ids and model names of their own, never hold, configure, fault or reset the simulator, and
  never assert on what other tests change (job listings, the simulator's log, the resident
  model). Each xdist worker starts the pair once, when its first such test needs it.
- `foreman_cli`: runs `python -m foreman_app ARGS...` to completion with a clean FOREMAN_*
  environment plus `env`, and returns the CompletedProcess.

The classes and helpers live in `e2e_processes.py` (import them from there, not from here).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from e2e_processes import ForemanServer, SimulatorProcess, clean_environment


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    """A fresh simulated Ollama process with no delays."""
    sim = SimulatorProcess(tmp_path / "simulator.log")
    try:
        yield sim
    finally:
        sim.kill()


@pytest.fixture
def foreman_server(
    tmp_path: Path, simulator: SimulatorProcess
) -> Iterator[Callable[..., ForemanServer]]:
    """Start `foreman serve` processes: `foreman_server(env=None, target=None)`."""
    servers: list[ForemanServer] = []

    def start(env: Mapping[str, str] | None = None, target: str | None = None) -> ForemanServer:
        number = len(servers)
        settings = {
            "FOREMAN_OLLAMA_URL": target or simulator.url,
            "FOREMAN_DB_PATH": str(tmp_path / f"foreman-{number}.db"),
            "FOREMAN_SHUTDOWN_GRACE": "5s",
            **(env or {}),
        }
        server = ForemanServer(settings, tmp_path / f"foreman-{number}.log")
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            if server.running:
                server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForemanServer]:
    """A simulator and `foreman serve` pair shared by well-behaved tests (see above)."""
    directory = tmp_path_factory.mktemp("shared")
    simulator = SimulatorProcess(directory / "simulator.log")
    server = ForemanServer(
        {
            "FOREMAN_OLLAMA_URL": simulator.url,
            "FOREMAN_DB_PATH": str(directory / "foreman.db"),
            "FOREMAN_SHUTDOWN_GRACE": "5s",
        },
        directory / "foreman.log",
    )
    try:
        yield server.start()
    finally:
        if server.running:
            server.stop()
        simulator.kill()


@pytest.fixture
def foreman_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m foreman_app ARGS…` to completion: `foreman_cli(*args, env=…, input=…)`."""

    def run(
        *args: str, env: Mapping[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foreman_app", *args],
            env=clean_environment(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run
