"""Real processes for end-to-end tests: the simulated Ollama and `foreman serve`.

The fixtures in `conftest.py` hand these out; tests import the names for annotations and the
small helpers (`free_port`, `wait_until`). Child processes never inherit the developer's
FOREMAN_* or OLLAMA_* variables.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
FAST_SIMULATOR = ("--load-delay", "0", "--ttft", "0", "--token-delay", "0", "--tokens", "8")

LOCAL = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
"""One client for the helpers' many short requests to local processes. `httpx.get()` makes a
client per call, and a client costs ~30 ms of CPU (its TLS context): polls at 50 Hz would keep
a core busy. Without keep-alive, a killed and restarted server never meets a stale connection."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, chosen by the kernel.

    Linux hands out a random odd port for a bind to port 0 and keeps even ones for outgoing
    connections, so parallel workers and concurrent runs rarely pick the same port; when
    another process takes it before our server binds it, `ForemanServer` moves to a new one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without FOREMAN_*/OLLAMA_* variables, plus `extra`."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FOREMAN_", "OLLAMA_"))
    }
    return {**base, **(extra or {})}


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _end(process: subprocess.Popen[Any], sig: int, timeout: float = STOP_TIMEOUT) -> int:
    """Send `sig` to a process we started and reap it; SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


class SimulatorProcess:
    """A simulated Ollama in its own process, and its control API."""

    def __init__(self, log_path: Path, args: tuple[str, ...] = FAST_SIMULATOR) -> None:
        self._log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foreman_adapters.simulator", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=clean_environment(),
        )
        self.url = self._read_url()

    def _read_url(self) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                self.kill()
                raise AssertionError(f"simulator did not start: {self._log_path.read_text()}")
        line = self.process.stdout.readline()
        prefix = "listening on "
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError(f"simulator said {line!r}: {self._log_path.read_text()}")
        return line[len(prefix) :].strip()

    def control(self, action: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST /_sim/<action>; the simulator's stats after it."""
        response = LOCAL.post(f"{self.url}/_sim/{action}", json=dict(payload or {}))
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """GET /_sim/stats: counters, resident models, faults."""
        response = LOCAL.get(f"{self.url}/_sim/stats")
        response.raise_for_status()
        return response.json()

    def faults(self, **spec: Any) -> dict[str, Any]:
        """Arm faults, e.g. `faults(fail_next={"count": 1, "status": 503})`, `faults(down=True)`."""
        return self.control("faults", spec)

    def configure(self, **settings: float) -> dict[str, Any]:
        """Change delays: load_delay, ttft, token_delay (seconds), tokens."""
        return self.control("config", settings)

    def hold(self) -> dict[str, Any]:
        """Make chat/generate requests wait at the target until `release()`."""
        return self.control("hold")

    def release(self, count: int | None = None) -> dict[str, Any]:
        """Let held requests go on; with `count`, only that many more, and go on holding."""
        return self.control("release", {} if count is None else {"count": count})

    def reset(self) -> dict[str, Any]:
        """Initial models, no faults, counters at zero."""
        return self.control("reset")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll the stats until `predicate(stats)` holds; returns those stats."""

        def satisfied() -> dict[str, Any] | None:
            stats = self.stats()
            return stats if predicate(stats) else None

        return wait_until(satisfied, timeout, "the simulator's state")

    def stop(self) -> int:
        """SIGTERM and wait."""
        code = _end(self.process, signal.SIGTERM)
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL and wait."""
        _end(self.process, signal.SIGKILL)
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


class PortTaken(AssertionError):
    """Another process listens on the port a server was to bind."""


class ForemanServer:
    """`foreman serve` in its own process, on a fixed port so that a restart keeps its URL.

    Without FOREMAN_LISTEN_ADDR in `env` it picks a free port, and if another process takes
    that port before the first start binds it, it moves to a new one.
    """

    PORT_ATTEMPTS = 5

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self._movable = "FOREMAN_LISTEN_ADDR" not in self.env
        if self._movable:
            self.env["FOREMAN_LISTEN_ADDR"] = f"127.0.0.1:{free_port()}"
        self.db_path = Path(self.env["FOREMAN_DB_PATH"])
        self._log_path = log_path
        self._log_start = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the server listens."""
        return f"http://{self.env['FOREMAN_LISTEN_ADDR']}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """An Authorization header with the first configured token, or none."""
        tokens = [t.strip() for t in self.env.get("FOREMAN_AUTH_TOKEN", "").split(",") if t.strip()]
        return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}

    def start(self) -> ForemanServer:
        """Start the process and wait until its own /healthz answers."""
        for _ in range(self.PORT_ATTEMPTS):
            with self._log_path.open("ab") as log:
                self._log_start = log.tell()
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "foreman_app", "serve"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_environment(self.env),
                )
            try:
                wait_until(self._healthy, START_TIMEOUT, f"foreman at {self.url}")
            except PortTaken:
                if not self._movable:
                    raise
                self.env["FOREMAN_LISTEN_ADDR"] = f"127.0.0.1:{free_port()}"
                continue
            self._movable = False  # a restart must keep the URL that tests hold
            return self
        raise AssertionError(f"no free port for foreman in {self.PORT_ATTEMPTS} attempts")

    def _healthy(self) -> bool:
        """Whether this server answers /healthz: a process that took the port first answers
        with another target, or none."""
        assert self.process is not None
        if self.process.poll() is not None:
            if b"address already in use" in self._log_path.read_bytes()[self._log_start :]:
                raise PortTaken(f"{self.url} was taken:\n{self.log()}")
            raise AssertionError(
                f"foreman exited with {self.process.returncode} while starting:\n{self.log()}"
            )
        try:
            health = LOCAL.get(f"{self.url}/healthz", timeout=1)
            answer = health.json() if health.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            return False
        ours = self.env["FOREMAN_OLLAMA_URL"].rstrip("/")
        return isinstance(answer, dict) and answer.get("target") == ours

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Ask the server to shut down (SIGTERM by default); its exit status."""
        assert self.process is not None
        return _end(self.process, sig)

    def kill(self) -> int:
        """SIGKILL: a crash, as far as foreman can tell."""
        assert self.process is not None
        return _end(self.process, signal.SIGKILL)

    def restart(self) -> ForemanServer:
        """Stop (if running) and start again with the same environment, port and database."""
        if self.running:
            self.stop()
        return self.start()

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr."""
        return self._log_path.read_text(errors="replace")


FINISHED_STATES = ("done", "failed", "cancelled")


class JobsApi:
    """foreman's job routes over HTTP (`/jobs`), for tests that watch jobs, sync ones included."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.headers = dict(headers or {})

    def submit(self, body: Mapping[str, Any]) -> str:
        """POST /jobs; the new job's id (fails the test unless the answer is 202)."""
        response = LOCAL.post(f"{self.url}/jobs", json=dict(body), headers=self.headers)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def get(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: the job object."""
        response = LOCAL.get(f"{self.url}/jobs/{job_id}", headers=self.headers)
        response.raise_for_status()
        return response.json()

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        """GET /jobs (newest first), optionally in one state; the first 1000."""
        params = {"limit": "1000", **({"state": state} if state else {})}
        response = LOCAL.get(f"{self.url}/jobs", params=params, headers=self.headers)
        response.raise_for_status()
        return response.json()["jobs"]

    def wait_for_state(
        self, job_id: str, states: tuple[str, ...] = FINISHED_STATES, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll GET /jobs/{id} until the job is in one of `states`; the job object."""

        def reached() -> dict[str, Any] | None:
            job = self.get(job_id)
            return job if job["state"] in states else None

        return wait_until(reached, timeout, f"job {job_id} to be {'/'.join(states)}")

    def wait_for_queued(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll until exactly `count` jobs are queued; those jobs, oldest first."""

        def reached() -> tuple[list[dict[str, Any]]] | None:
            queued = self.list("queued")
            # wrapped in a tuple: an empty list is a result too, not a falsy "not yet"
            return (list(reversed(queued)),) if len(queued) == count else None

        return wait_until(reached, timeout, f"{count} queued jobs")[0]
