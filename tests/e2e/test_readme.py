"""The README's two commands stay true: they come first, the first works in a fresh virtual
environment made from a clean copy of the repository, and CI runs the second verbatim.

The install command ends in `foreman demo`, which runs until stopped: here it is started, asked
for its health and stopped with Ctrl-C. The test command is not run here: it ends in `pytest`,
which would run this test again, and `.ci/run` runs exactly that line from a clean clone.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_processes import (
    LOCAL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    clean_environment,
    free_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 600
"""Seconds one shell step may take (a cold pip cache downloads every dependency)."""


def readme_commands() -> tuple[str, str]:
    """The install-and-demo command and the test command: the README's first ```sh block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block is not None, "README.md has no ```sh block"
    first_heading = re.search(r"^#{2,} ", text, re.MULTILINE)
    assert first_heading is None or block.start() < first_heading.start(), (
        "the two commands must come before the first section"
    )
    lines = [line.strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert len(commands) == 2, f"expected two commands, found {commands}"
    return commands[0], commands[1]


def steps(command: str) -> list[str]:
    """The `&&`-joined steps of a one-line shell command."""
    return [step.strip() for step in command.split("&&")]


def test_the_readme_opens_with_install_and_demo_then_the_test_command() -> None:
    install, test = readme_commands()
    assert steps(install)[0] == steps(test)[0] == "python3 -m venv .venv"
    assert steps(install)[-1] == ".venv/bin/foreman demo"
    assert steps(test)[-1] == ".venv/bin/pytest"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = readme_commands()
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_configuration_table_lists_every_variable_foreman_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| (FOREMAN_[A-Z_]+) \|", readme, re.MULTILINE))
    config = (ROOT / "src" / "foreman_app" / "config.py").read_text()
    read = set(re.findall(r'"(FOREMAN_[A-Z_]+)"', config))
    assert read, "no FOREMAN_* variable found in config.py"
    assert documented == read


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(STEP_TIMEOUT + 300)
def test_the_install_command_works_in_a_fresh_venv_from_a_clean_copy(tmp_path: Path) -> None:
    install, _ = readme_commands()
    copy = clean_copy(ROOT, tmp_path / "foreman")

    _shell(" && ".join(steps(install)[:-1]), copy)
    installed = _run(
        [".venv/bin/python", "-c", "import foreman_app; print(foreman_app.__file__)"], copy
    )
    assert Path(installed.stdout.strip()).is_relative_to(copy / ".venv"), installed.stdout
    shown = _run([".venv/bin/foreman", "--help"], copy)
    assert "demo" in shown.stdout
    _demo_starts_and_stops(copy)


def clean_copy(root: Path, destination: Path) -> Path:
    """The files a fresh clone would have, plus new files not yet committed (tracked and
    untracked, minus what .gitignore excludes), copied to `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    for name in listed.stdout.decode().split("\0"):
        source = root / name
        if name and source.is_file():  # a tracked file deleted in the working tree is skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _demo_starts_and_stops(copy: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = clean_environment({"FOREMAN_LISTEN_ADDR": url.removeprefix("http://")})
    with (copy / "demo.log").open("wb") as log:
        demo = subprocess.Popen(
            [".venv/bin/foreman", "demo"], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:

        def healthy() -> bool:
            assert demo.poll() is None, (copy / "demo.log").read_text()
            try:
                return LOCAL.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, START_TIMEOUT, "foreman demo from the fresh venv")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(STOP_TIMEOUT) == 0, (copy / "demo.log").read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "Traceback" not in (copy / "demo.log").read_text()


def _shell(command: str, cwd: Path) -> None:
    """Run a line of the README as a user's shell would, in `cwd`."""
    done = subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _environment() -> dict[str, str]:
    """A user's environment: no foreman or Ollama settings, no venv of ours leaking in."""
    env = clean_environment({"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    return env
