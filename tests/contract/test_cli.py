"""The `foreman` command's client side, against a fake of foreman's native routes."""

from __future__ import annotations

import json
import socket
from importlib.metadata import version

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from fakes_foreman_api import FakeForemanApi
from foreman_app import cli, terminal
from foreman_app.client import ForemanClient, JobView

CLEAN_ENV = {"FOREMAN_URL": None, "FOREMAN_AUTH_TOKEN": None}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeForemanApi:
    """A fake server behind every client the CLI makes."""
    api = FakeForemanApi()

    def client_on_fake(url: str, token: str | None) -> ForemanClient:
        return ForemanClient(url, token, transport=api.transport())

    monkeypatch.setattr(cli, "make_client", client_on_fake)
    monkeypatch.setattr(cli, "POLL_INTERVAL", 0)
    return api


def run(*args: str, stdin: str | None = None, env: dict | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=stdin, env={**CLEAN_ENV, **(env or {})})


def one_error_line(result: Result) -> str:
    """The single stderr line of a failed command (and proof there is no traceback)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("foreman: ")
    assert "Traceback" not in result.output
    return lines[0]


def terminal_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI believe stdout and stderr are terminals."""
    monkeypatch.setattr(
        cli,
        "make_console",
        lambda stderr=False: Console(stderr=stderr, force_terminal=True, width=120),
    )


# --- submit --------------------------------------------------------------------------------


def test_submit_prints_the_job_id_of_a_chat_job(fake) -> None:
    result = run("submit", "-m", "llama3.2", "--system", "Be brief.", "--priority", "3", "Hi there")

    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert result.stdout == f"{job_id}\n"
    assert fake.jobs[job_id].body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
        "priority": 3,
    }


def test_submit_dash_reads_the_prompt_from_stdin(fake) -> None:
    result = run("submit", "-m", "llama3.2", "-", stdin="a prompt\nover two lines\n")

    assert result.exit_code == 0, result.output
    body = fake.jobs[result.stdout.strip()].body
    assert body["messages"] == [{"role": "user", "content": "a prompt\nover two lines\n"}]


def test_submit_generate_with_a_webhook_and_json_output(fake) -> None:
    result = run(
        "submit", "-m", "qwen3:8b", "--generate", "--webhook", "http://hooks.test/", "--json", "Go"
    )

    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["job_id"]
    body = fake.jobs[job_id].body
    assert (body["kind"], body["prompt"], body["state_webhook_url"]) == (
        "generate",
        "Go",
        "http://hooks.test/",
    )


def test_submit_wait_prints_the_completion(fake) -> None:
    fake.next_script = ["queued", "loading", "working", "done"]

    result = run("submit", "-m", "llama3.2", "--wait", "Why?")

    assert result.exit_code == 0, result.output
    assert result.stdout == "echo: Why?\n"
    assert result.stderr == ""  # progress is shown only on a terminal


def test_submit_wait_shows_progress_on_a_terminal(fake, monkeypatch) -> None:
    terminal_consoles(monkeypatch)
    fake.next_script = ["queued", "queued", "working", "done"]

    result = run("submit", "-m", "llama3.2", "--wait", "Why?")

    assert result.exit_code == 0, result.output
    assert result.stdout == "echo: Why?\n"
    # The status line is redrawn on the spinner's clock; its last text is drawn when it stops.
    [job_id] = fake.jobs
    assert f"{job_id} done" in result.stderr


@pytest.mark.parametrize(
    ("view", "line"),
    [
        ({"state": "queued", "queue_position": 0}, "J queued (next in line)"),
        ({"state": "queued", "queue_position": 3, "attempts": 1}, "J queued (3 ahead, attempt 2)"),
        ({"state": "loading", "model": "m:latest"}, "J loading m:latest"),
        ({"state": "working", "model": "m:latest"}, "J working on m:latest"),
        ({"state": "done"}, "J done"),
    ],
)
def test_progress_line_says_where_the_job_is(view, line) -> None:
    assert terminal.progress_line(JobView.from_json({"job_id": "J", **view})).plain == line


def test_submit_wait_json_prints_the_finished_job(fake) -> None:
    result = run("submit", "-m", "llama3.2", "--wait", "--json", "Why?")

    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["state"] == "done"
    assert job["artifacts"][0]["data"] == "echo: Why?"


def test_submit_wait_exits_1_with_the_error_when_the_job_fails(fake) -> None:
    fake.next_script = ["queued", "working", "failed"]

    result = run("submit", "-m", "llama3.2", "--wait", "Why?")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert one_error_line(result).endswith(f"failed: {fake.failure}")


def test_submit_wait_exits_1_when_the_job_is_cancelled(fake) -> None:
    fake.next_script = ["queued", "cancelled"]

    result = run("submit", "-m", "llama3.2", "--wait", "Why?")

    assert result.exit_code == 1
    assert one_error_line(result).endswith("was cancelled")


def test_submit_wait_timeout_gives_up_with_one_line(fake) -> None:
    fake.next_script = ["queued"]

    result = run("submit", "-m", "llama3.2", "--wait", "--timeout", "0", "Why?")

    assert result.exit_code == 1
    assert "is still queued after 0s" in one_error_line(result)


def test_ctrl_c_while_waiting_leaves_the_job_and_says_how_to_cancel_it(fake) -> None:
    fake.interrupt_polls = True

    result = run("submit", "-m", "llama3.2", "--wait", "Why?")

    [job_id] = fake.jobs
    assert result.exit_code == 130
    assert one_error_line(result) == (
        f"foreman: stopped waiting; job {job_id} goes on ('foreman cancel {job_id}' stops it)"
    )
    assert fake.jobs[job_id].state == "queued"


def test_submit_an_unknown_model_is_one_line_with_ollamas_message(fake) -> None:
    result = run("submit", "-m", "nope", "hi")

    assert result.exit_code == 1
    assert one_error_line(result) == "foreman: model 'nope' not found"


# --- jobs, job, cancel, ps -----------------------------------------------------------------


def test_jobs_prints_a_table_newest_first(fake) -> None:
    old = fake.add_job("llama3.2", script=["done"])
    new = fake.add_job("qwen3:8b", script=["queued"])

    result = run("jobs")

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "MODEL", "PRIORITY", "ATTEMPTS", "CREATED", "(UTC)"]
    assert [row.split()[:5] for row in rows] == [
        [new, "queued", "qwen3:8b", "0", "0"],
        [old, "done", "llama3.2:latest", "0", "1"],
    ]


def test_jobs_filters_limits_and_prints_json(fake) -> None:
    ids = [fake.add_job(script=["done"]) for _ in range(3)]
    fake.add_job(script=["queued"])

    result = run("jobs", "--state", "done", "--limit", "2", "--json")

    assert result.exit_code == 0, result.output
    assert [job["job_id"] for job in json.loads(result.stdout)["jobs"]] == ids[::-1][:2]


def test_jobs_on_a_terminal_is_a_rich_table(fake, monkeypatch) -> None:
    terminal_consoles(monkeypatch)
    job_id = fake.add_job(script=["done"])

    result = run("jobs")

    assert result.exit_code == 0, result.output
    assert job_id in result.stdout  # whole, not cut short with an ellipsis
    assert "PRIORITY" in result.stdout


def test_job_shows_one_job_in_full_with_its_completion(fake) -> None:
    job_id = fake.add_job(prompt="tell me", script=["done"])

    result = run("job", job_id)

    assert result.exit_code == 0, result.output
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines()[:4])
    assert fields == {"job": job_id, "state": "done", "kind": "chat", "model": "llama3.2:latest"}
    assert result.stdout.endswith("\n\necho: tell me\n")


def test_job_json_is_the_servers_job_object(fake) -> None:
    job_id = fake.add_job(script=["done"])

    result = run("job", job_id, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == fake.view(fake.jobs[job_id])


def test_job_on_a_terminal_shows_the_fields(fake, monkeypatch) -> None:
    terminal_consoles(monkeypatch)
    job_id = fake.add_job(script=["failed"])

    result = run("job", job_id)

    assert result.exit_code == 0, result.output
    assert job_id in result.stdout
    assert "model crashed" in result.stdout


def test_an_unknown_job_is_one_line(fake) -> None:
    result = run("job", "01JNOPE")

    assert result.exit_code == 1
    assert one_error_line(result) == "foreman: job not found"


def test_cancel_prints_the_new_state_and_refuses_a_finished_job(fake) -> None:
    queued = fake.add_job(script=["queued"])
    done = fake.add_job(script=["done"])

    cancelled = run("cancel", queued)
    refused = run("cancel", done)

    assert (cancelled.exit_code, cancelled.stdout) == (0, f"{queued} cancelled\n")
    assert fake.jobs[queued].state == "cancelled"
    assert refused.exit_code == 1
    assert one_error_line(refused) == "foreman: job is already done"


def test_cancel_json(fake) -> None:
    queued = fake.add_job(script=["queued"])

    result = run("cancel", "--json", queued)

    assert json.loads(result.stdout)["state"] == "cancelled"


def test_ps_shows_resident_models_and_the_queue_per_model(fake) -> None:
    fake.add_job("qwen3:8b", script=["queued"])
    fake.add_job("qwen3:8b", script=["queued"])
    running = fake.add_job("llama3.2", script=["working"])

    result = run("ps")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RESIDENT", "MODEL", "SIZE", "VRAM", "UNTIL"]
    assert lines[1].split()[:3] == ["llama3.2:latest", "2.0", "GB"]
    assert f"running: {running} llama3.2:latest working" in lines
    assert "queued: 2 jobs, oldest waiting 42s" in lines
    assert ["qwen3:8b", "0", "2"] in [line.split() for line in lines]


def test_ps_with_nothing_resident_or_queued(fake) -> None:
    fake.resident = []

    result = run("ps")

    assert result.stdout == "no model resident\nqueue empty\n"


def test_ps_json_and_on_a_terminal(fake, monkeypatch) -> None:
    fake.add_job("qwen3:8b", script=["queued"])

    as_json = json.loads(run("ps", "--json").stdout)
    terminal_consoles(monkeypatch)
    pretty = run("ps")

    assert as_json["ps"]["models"][0]["name"] == "llama3.2:latest"
    assert as_json["queue"]["queued_total"] == 1
    assert pretty.exit_code == 0, pretty.output
    assert "qwen3:8b" in pretty.stdout


# --- configuration and failures ------------------------------------------------------------


def test_url_and_token_come_from_options_or_the_environment(fake) -> None:
    fake.token = "s3cret"

    from_env = run("jobs", "--json", env={"FOREMAN_AUTH_TOKEN": "s3cret"})
    from_option = run("--token", "s3cret", "jobs", "--json")
    without = run("jobs")

    assert (from_env.exit_code, from_option.exit_code) == (0, 0)
    assert without.exit_code == 1
    assert "set FOREMAN_AUTH_TOKEN or pass --token" in one_error_line(without)


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    result = run("--url", url, "jobs")

    assert result.exit_code == 1
    assert one_error_line(result) == (
        f"foreman: cannot reach foreman at {url} (connection refused); is 'foreman serve' running?"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "hi"],
        ["jobs", "--limit", "many"],
        ["jobs", "--state", "sleeping"],
        ["submit", "-m", "llama3.2", "--timeout", "5", "hi"],
        ["job", " "],
        ["--url", "localhost:8080", "jobs"],
        ["frobnicate"],
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(fake, args) -> None:
    result = run(*args)

    assert result.exit_code == 2
    assert one_error_line(result).endswith("--help')")


def test_version() -> None:
    result = run("--version")

    assert result.exit_code == 0
    assert result.stdout == f"foreman, version {version('foreman')}\n"
