"""`foreman demo` as a newcomer runs it: it starts with no Ollama installed, serves the official
`ollama` client, shows its sample jobs to the CLI, and stops cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import pytest
from e2e_processes import (
    LOCAL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    clean_environment,
    free_port,
    wait_until,
)

from foreman_app.client import JobView
from foreman_app.demo import (
    DEFAULT_LISTEN,
    DEMO_MODELS,
    SAMPLE_PROMPTS,
    demo_simulator,
    drain_summary,
    model_runs,
)
from foreman_core.job import normalize_model

RunCli = Callable[..., subprocess.CompletedProcess[str]]


class DemoProcess:
    """`python -m foreman_app demo`, its output in files."""

    def __init__(self, tmp_path: Path, env: Mapping[str, str]) -> None:
        self.stdout_path, self.stderr_path = tmp_path / "demo.out", tmp_path / "demo.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "foreman_app", "demo"],
                stdout=out,
                stderr=err,
                env=clean_environment(env),
                cwd=tmp_path,
            )

    def output(self) -> str:
        """What the demo printed on stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def errors(self) -> str:
        """What the demo printed on stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        """Running; a demo that died is a failure, with its output."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"demo exited with {self.process.returncode}:\n{self.output()}\n{self.errors()}"
            )
        return True

    def wait_healthy(self, url: str) -> None:
        """Until GET /healthz answers 200."""

        def healthy() -> bool:
            self.alive()
            try:
                return LOCAL.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, START_TIMEOUT, f"foreman demo at {url}")

    def wait_for_output(self, text: str) -> None:
        """Until the demo has printed `text`."""
        wait_until(lambda: self.alive() and text in self.output(), START_TIMEOUT, repr(text))

    def stop(self, sig: signal.Signals) -> int:
        """Send `sig` and wait for the exit status (SIGKILL and fail when it does not exit)."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"demo ignored {sig.name}:\n{self.output()}") from None

    def kill(self) -> None:
        """Make sure it is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str]], DemoProcess]]:
    """Start demos; every one is killed after the test if it is still running."""
    demos: list[DemoProcess] = []

    def start(env: Mapping[str, str]) -> DemoProcess:
        demos.append(DemoProcess(tmp_path, env))
        return demos[-1]

    try:
        yield start
    finally:
        for demo in demos:
            demo.kill()


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_serves_the_official_ollama_client_and_stops_cleanly_on_ctrl_c(
    start_demo: Callable[[Mapping[str, str]], DemoProcess], foreman_cli: RunCli
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    demo = start_demo({"FOREMAN_LISTEN_ADDR": url.removeprefix("http://")})
    demo.wait_healthy(url)
    demo.wait_for_output(f"export OLLAMA_HOST={url} FOREMAN_URL={url}")

    client = ollama.Client(host=url)
    installed = {model.model for model in client.list().models}
    assert {"llama3.2:latest", "qwen2.5:0.5b"} <= installed
    prompt = "Is the demo working?"
    answer = client.chat(model="llama3.2", messages=[{"role": "user", "content": prompt}])
    assert answer.message.content == demo_simulator().reply("llama3.2", prompt)

    listed = foreman_cli("jobs", "--json", env={"FOREMAN_URL": url})
    assert listed.returncode == 0, listed.stderr
    jobs = [JobView.from_json(item) for item in json.loads(listed.stdout)["jobs"]]
    samples = sorted((job for job in jobs if job.priority == 0), key=lambda job: job.job_id)
    assert [job.model for job in samples] == [
        normalize_model(DEMO_MODELS[number % len(DEMO_MODELS)])
        for number in range(len(SAMPLE_PROMPTS))
    ]
    assert any(job.priority == 10 and job.state == "done" for job in jobs)  # the chat above
    shown = foreman_cli("ps", env={"FOREMAN_URL": url})
    assert shown.returncode == 0, shown.stderr
    schema = httpx.get(f"{url}/schema/openapi.json", timeout=5).json()  # docs/api.md promises it
    assert {"/api/chat", "/jobs", "/healthz"} <= set(schema["paths"])

    assert demo.stop(signal.SIGINT) == 0
    assert "Traceback" not in demo.errors()
    assert demo.output().rstrip().endswith("foreman demo stopped.")


@pytest.mark.e2e
def test_demo_moves_off_a_taken_default_port_and_stops_on_sigterm(
    start_demo: Callable[[Mapping[str, str]], DemoProcess],
) -> None:
    with _occupied(DEFAULT_LISTEN):
        demo = start_demo({})

        def announced_url() -> str | None:
            demo.alive()
            found = re.search(
                r"^  foreman +(http://\S+)  \(port 8080 was taken\)$", demo.output(), re.M
            )
            return found.group(1) if found else None

        url = wait_until(announced_url, START_TIMEOUT, "the demo's banner")
        assert url != "http://127.0.0.1:8080"
        health = httpx.get(f"{url}/healthz", timeout=5).json()
        assert health["degraded"] is False
        assert f"simulated Ollama  {health['target']}" in demo.output()
        assert demo.stop(signal.SIGTERM) == 0
    assert "Traceback" not in demo.errors()


@contextlib.contextmanager
def _occupied(address: tuple[str, int]) -> Iterator[None]:
    """Listen on `address` for the block, unless something else already does."""
    try:
        holder = socket.create_server(address)
    except OSError:
        yield  # taken already: just as good
        return
    with holder:
        yield


def test_model_runs_count_consecutive_starts_per_model() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = [
        _job("A1", "a", start),
        _job("B1", "b", start + timedelta(seconds=3)),
        _job("A2", "a", start + timedelta(seconds=1)),
        _job("B2", "b", start + timedelta(seconds=4)),
        _job("A3", "a", start + timedelta(seconds=2)),
        _job("A4", "a", start + timedelta(seconds=5)),
        _job("never", "b", None),
    ]
    assert model_runs(jobs) == [("a", 3), ("b", 2), ("a", 1)]


def test_drain_summary_counts_loads_and_reports_jobs_that_did_not_complete() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = [
        _job("1", "llama3.2:latest", start),
        _job("2", "qwen2.5:0.5b", start + timedelta(seconds=2)),
        _job("3", "llama3.2:latest", start + timedelta(seconds=1)),
        _job("4", "qwen2.5:0.5b", None, state="cancelled"),
    ]
    summary = drain_summary(jobs)
    assert "2 on llama3.2:latest, then 1 on qwen2.5:0.5b" in summary
    assert "That is 2 model loads" in summary
    assert "1 did not complete: cancelled" in summary


def _job(job_id: str, model: str, started: datetime | None, state: str = "done") -> JobView:
    return JobView(job_id=job_id, kind="chat", model=model, state=state, started_at=started)
