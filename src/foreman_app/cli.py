"""The `foreman` command: run the server, or talk to one as a client.

Client commands read FOREMAN_URL and FOREMAN_AUTH_TOKEN (or `--url`/`--token`). On a terminal
they print rich tables and live progress; piped, they print plain text; `--json` prints the
server's JSON objects for scripts. Every failure is one `foreman: …` line on stderr and a
non-zero exit status: 1 for server or runtime errors, 2 for usage mistakes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
from rich.text import Text

from foreman_app.client import ForemanClient, JobView
from foreman_app.client_calls import base_url
from foreman_app.client_errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    ForemanTimeout,
    NotFound,
    QueueFullError,
    ServerUnreachable,
    Unauthorized,
)
from foreman_app.terminal import (
    echo_json,
    job_fields,
    make_console,
    print_fields,
    print_queued,
    print_table,
    progress_line,
    running_jobs,
    size,
    when,
)
from foreman_core.job import JobState

POLL_INTERVAL = 0.5
"""Seconds between polls of `submit --wait`."""

STATES = [str(state) for state in JobState]


def make_client(url: str, token: str | None) -> ForemanClient:
    """The client every command uses (tests replace this to inject a transport)."""
    return ForemanClient(url, token)


class Failure(click.ClickException):
    """A runtime failure, shown as one `foreman: …` line; exit status 1."""

    def show(self, file: Any = None) -> None:
        """Print the one line on stderr."""
        click.echo(f"foreman: {self.message}", err=True)


class Mistake(Failure):
    """A usage mistake: one line that points at `--help`; exit status 2."""

    exit_code = 2


class Interrupted(Failure):
    """The user pressed Ctrl-C; exit status 130, as a shell reports SIGINT."""

    exit_code = 130


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn client errors and click's multi-line usage errors into one-line failures."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "foreman"
        raise Mistake(f"{exc.format_message()} (see '{where} --help')") from exc
    except ClientError as exc:
        raise Failure(describe(exc)) from exc


def describe(exc: ClientError) -> str:
    """The line a user reads for a client error."""
    if isinstance(exc, ServerUnreachable):
        return f"{exc}; is 'foreman serve' running?"
    if isinstance(exc, Unauthorized):
        return f"{exc.message}; set FOREMAN_AUTH_TOKEN or pass --token"
    if isinstance(exc, QueueFullError) and exc.retry_after is not None:
        return f"{exc.message} (retry in {exc.retry_after:g}s)"
    if isinstance(exc, ForemanTimeout):
        return f"{exc}; it keeps going: 'foreman job {exc.job.job_id}' shows it later"
    if isinstance(exc, NotFound | Conflict | BadRequest | QueueFullError):
        return exc.message
    if isinstance(exc, ApiError):
        return f"{exc.message} (HTTP {exc.status})"
    return str(exc)


class ForemanGroup(click.Group):
    """A click group whose errors are one line on stderr, never a traceback."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """Parse the group's own options, with one-line usage errors."""
        with _one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, with one-line usage and client errors."""
        with _one_line_errors():
            return super().invoke(ctx)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the client commands send their requests."""

    url: str
    token: str | None

    def client(self, ctx: click.Context) -> ForemanClient:
        """A client closed when the command ends; a bad `--url` is a usage mistake.

        The URL is checked here, not when the group parses it, so that a FOREMAN_URL meant for
        the client commands cannot stop `foreman serve` or `foreman demo` from starting.
        """
        try:
            url = base_url(self.url)
        except ValueError as exc:
            hint = "'--url' (env var: 'FOREMAN_URL')"
            raise click.BadParameter(str(exc), ctx.find_root(), param_hint=hint) from exc
        return ctx.with_resource(make_client(url, self.token))


def job_id_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A job id: any non-blank string, stripped (the server says whether it exists)."""
    text = value.strip()
    if not text:
        raise click.BadParameter("a job id cannot be empty", ctx, param)
    return text


@click.group(cls=ForemanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="foreman", prog_name="foreman")
@click.option(
    "--url",
    envvar="FOREMAN_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    show_envvar=True,
    help="foreman server for the client commands.",
)
@click.option(
    "--token",
    envvar="FOREMAN_AUTH_TOKEN",
    show_envvar=True,
    help="Bearer token for a server that requires one.",
)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None) -> None:
    """foreman: a durable job queue in front of one Ollama host."""
    ctx.obj = Target(url, token)


@main.command()
def serve() -> None:
    """Run the server (configured by FOREMAN_* environment variables)."""
    from foreman_app.server import serve as run_server

    sys.exit(run_server())


@main.command(short_help="Run the server in front of a simulated Ollama.")
def demo() -> None:
    """Run the server in front of a built-in simulated Ollama (no GPU needed)."""
    from foreman_app.server import demo as run_demo

    sys.exit(run_demo())


@main.command(short_help="Submit a job; print its id, or with --wait its completion.")
@click.option("-m", "--model", required=True, help="Model to run, e.g. llama3.2.")
@click.argument("prompt")
@click.option("--system", help="System prompt.")
@click.option("--generate", is_flag=True, help="Submit an /api/generate job instead of a chat.")
@click.option("--webhook", metavar="URL", help="POST each state change of the job to URL.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--wait", is_flag=True, help="Wait for the job and print its completion.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --wait: give up waiting after this long.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: the job id, or with --wait the job."
)
@click.pass_obj
def submit(
    target: Target,
    model: str,
    prompt: str,
    system: str | None,
    generate: bool,
    webhook: str | None,
    priority: int,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Submit a chat job with PROMPT ('-' reads it from stdin) and print its id.

    With --wait, show the job's progress on stderr and print its completion; the exit status
    is 1 if the job failed or was cancelled.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    if not model.strip():
        raise click.UsageError("-m/--model cannot be empty")
    if prompt == "-":
        prompt = sys.stdin.read()
    client = target.client(click.get_current_context())
    job_id = client.submit(
        model,
        prompt,
        system=system,
        kind="generate" if generate else "chat",
        webhook=webhook,
        priority=priority,
    )
    if not wait:
        click.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
        return
    job = _wait_with_progress(client, job_id, timeout)
    if as_json:
        echo_json(job.raw)
    elif job.state == JobState.DONE:
        click.echo(client.completion(job) or "")
    _fail_unless_done(job)


def _wait_with_progress(client: ForemanClient, job_id: str, timeout: float | None) -> JobView:
    """Wait for the job, with a live status line on stderr when it is a terminal."""
    err = make_console(stderr=True)
    try:
        if not err.is_terminal:
            return client.wait(job_id, timeout=timeout, poll_interval=POLL_INTERVAL)
        with err.status(Text(f"{job_id} submitted")) as status:
            return client.wait(
                job_id,
                timeout=timeout,
                poll_interval=POLL_INTERVAL,
                on_update=lambda job: status.update(progress_line(job)),
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting; job {job_id} goes on ('foreman cancel {job_id}' stops it)"
        ) from None


def _fail_unless_done(job: JobView) -> None:
    if job.state == JobState.FAILED:
        raise Failure(f"job {job.job_id} failed: {job.error or 'no reason given'}")
    if job.state == JobState.CANCELLED:
        raise Failure(f"job {job.job_id} was cancelled")


@main.command()
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--model", help="Only jobs for this model.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most N jobs."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"jobs": [...]} as JSON.')
@click.pass_obj
def jobs(target: Target, state: str | None, model: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    client = target.client(click.get_current_context())
    found = list(client.iter_jobs(state, model, limit=limit, page_size=min(limit, 1000)))
    if as_json:
        echo_json({"jobs": [job.raw for job in found]})
        return
    if not found:
        click.echo("no jobs", err=True)
        return
    rows = [
        [
            job.job_id,
            job.state,
            job.model,
            str(job.priority),
            str(job.attempts),
            when(job.created_at),
        ]
        for job in found
    ]
    headers = ["ID", "STATE", "MODEL", "PRIORITY", "ATTEMPTS", "CREATED (UTC)"]
    print_table(make_console(), headers, rows)


@main.command()
@click.argument("job_id", metavar="ID", callback=job_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print the job object as JSON.")
@click.pass_obj
def job(target: Target, job_id: str, as_json: bool) -> None:
    """Show one job in full, with its completion when done."""
    client = target.client(click.get_current_context())
    found = client.get(job_id)
    if as_json:
        echo_json(found.raw)
        return
    print_fields(make_console(), job_fields(found))
    completion = client.completion(found) if found.state == JobState.DONE else None
    if completion:
        click.echo()
        click.echo(completion)


@main.command()
@click.argument("job_id", metavar="ID", callback=job_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print the cancelled job as JSON.")
@click.pass_obj
def cancel(target: Target, job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one never runs, a running one is aborted."""
    cancelled = target.client(click.get_current_context()).cancel(job_id)
    if as_json:
        echo_json(cancelled.raw)
    else:
        click.echo(f"{cancelled.job_id} {cancelled.state}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"ps": …, "queue": …} as JSON.')
@click.pass_obj
def ps(target: Target, as_json: bool) -> None:
    """Show the models resident on Ollama and the queue per model."""
    client = target.client(click.get_current_context())
    resident, queue = client.ps(), client.queue()
    if as_json:
        echo_json({"ps": resident, "queue": queue})
        return
    console = make_console()
    models = [item for item in resident.get("models") or [] if isinstance(item, dict)]
    if models:
        rows = [
            [
                str(item.get("name") or item.get("model") or "?"),
                size(item.get("size")),
                size(item.get("size_vram")),
                str(item.get("expires_at") or ""),
            ]
            for item in models
        ]
        print_table(console, ["RESIDENT MODEL", "SIZE", "VRAM", "UNTIL"], rows)
    else:
        click.echo("no model resident")
    for running in running_jobs(queue.get("running")):
        click.echo(
            f"running: {running.get('job_id', '?')} {running.get('model', '?')} "
            f"{running.get('state', '')}".rstrip()
        )
    print_queued(console, queue)
