"""Processes for benchmarks: the simulated Ollama and `foreman serve`, started and measured.

Kept apart from tests/e2e on purpose: benchmarks run as plain scripts, not under pytest, and
need a few measurements (CPU time, RSS, start-up time) the tests do not.
"""

from __future__ import annotations

import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: the fields that matter come after its closing ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB (from /proc/PID/status)."""
    wanted = {"VmRSS", "VmHWM"}
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            values[name] = int(rest.split()[0])
    return values


def machine() -> dict[str, str]:
    """What a figure was measured on: CPU model, core count, Python, kernel."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def _end(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    """Send `sig` to a process we started and reap it; SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    return process.returncode


class Simulator:
    """`python -m foreman_adapters.simulator` on a free port, with no artificial delays."""

    def __init__(self, *args: str) -> None:
        # Closed in stop(): the log lives as long as the process it records.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foreman_adapters.simulator", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=clean_environment(),
        )
        self.url = self._read_url()

    @property
    def pid(self) -> int:
        """The simulator's process id."""
        return self.process.pid

    def _read_url(self) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                self.stop()
                raise RuntimeError("the simulator did not start")
        line = self.process.stdout.readline()
        prefix = "listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"the simulator said {line!r}")
        return line[len(prefix) :].strip()

    def stop(self) -> None:
        """SIGTERM, wait, close the pipes."""
        _end(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Foreman:
    """`python -m foreman_app serve` (or `python *command`) on a free port with a throw-away
    database."""

    target: str
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] = ("-m", "foreman_app", "serve")
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0
    """Seconds from spawning the process to the first 200 from /healthz."""

    def __post_init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="foreman-bench-")
        self.url = f"http://127.0.0.1:{free_port()}"
        # Closed in stop(): the log lives as long as the process it records.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> Foreman:
        """Spawn the server and wait until /healthz answers 200; records `started_in`."""
        settings = {
            "FOREMAN_LISTEN_ADDR": self.url.removeprefix("http://"),
            "FOREMAN_OLLAMA_URL": self.target,
            "FOREMAN_DB_PATH": str(Path(self._dir.name) / "foreman.db"),
            **self.env,
        }
        began = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, *self.command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_environment(settings),
        )
        self._wait_healthy()
        self.started_in = time.perf_counter() - began
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"foreman exited while starting:\n{self.log()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
        raise RuntimeError(f"foreman did not become healthy:\n{self.log()}")

    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM, wait, remove the database."""
        if self.process is not None:
            _end(self.process)
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> Foreman:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
