"""How the CLI shows jobs and the queue: rich tables on a terminal, aligned plain text when
piped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from foreman_app.client import JobView
from foreman_core.job import JobState


def make_console(stderr: bool = False) -> Console:
    """A rich console on stdout or stderr; it knows whether that stream is a terminal."""
    return Console(stderr=stderr, highlight=False)


def progress_line(job: JobView) -> Text:
    """One line saying where the job is."""
    if job.state == JobState.QUEUED:
        if job.queue_position is None:
            where = "waiting"
        elif job.queue_position == 0:
            where = "next in line"
        else:
            where = f"{job.queue_position} ahead"
        retry = f", attempt {job.attempts + 1}" if job.attempts else ""
        return Text(f"{job.job_id} queued ({where}{retry})")
    if job.state == JobState.LOADING:
        return Text(f"{job.job_id} loading {job.model}")
    if job.state == JobState.WORKING:
        return Text(f"{job.job_id} working on {job.model}")
    return Text(f"{job.job_id} {job.state}")


def job_fields(job: JobView) -> list[tuple[str, str]]:
    """The fields `foreman job` shows, as (name, value) pairs."""
    fields = [
        ("job", job.job_id),
        ("state", job.state),
        ("kind", job.kind),
        ("model", job.model),
        ("priority", str(job.priority)),
        ("attempts", str(job.attempts)),
    ]
    if job.queue_position is not None:
        fields.append(("queue position", str(job.queue_position)))
    for name, moment in (
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ):
        if moment is not None:
            fields.append((name, when(moment)))
    if job.error:
        fields.append(("error", job.error))
    for artifact in job.artifacts:
        size = "" if artifact.size is None else f", {artifact.size:,} bytes"
        fields.append((f"artifact {artifact.name}", f"{artifact.content_type}{size}"))
    return fields


def running_jobs(value: object) -> list[dict[str, Any]]:
    """The running job(s) of a /queue answer, which may give one object, a list, or null."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def print_queued(console: Console, queue: dict[str, Any]) -> None:
    """The queued part of a /queue answer: the total, the oldest wait, a row per model."""
    groups = [item for item in queue.get("queued") or [] if isinstance(item, dict)]
    total = queue.get("queued_total")
    if not isinstance(total, int):
        total = sum(item.get("count", 0) for item in groups if isinstance(item.get("count"), int))
    if not total:
        click.echo("queue empty")
        return
    age = queue.get("oldest_queued_age_seconds")
    oldest = f", oldest waiting {duration(age)}" if isinstance(age, int | float) else ""
    click.echo(f"queued: {total} job{'s' if total != 1 else ''}{oldest}")
    rows = [
        [str(item.get("model", "?")), str(item.get("priority", "")), str(item.get("count", ""))]
        for item in groups
    ]
    if rows:
        print_table(console, ["MODEL", "PRIORITY", "QUEUED"], rows)


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; aligned plain columns otherwise."""
    if console.is_terminal:
        table = Table(box=box.SIMPLE, header_style="bold")
        # The first column names a thing (a job id, a model): never cut it short.
        first = max(len(str(cell)) for cell in (headers[0], *(row[0] for row in rows)))
        table.add_column(headers[0], no_wrap=True, min_width=first)
        for header in headers[1:]:
            table.add_column(header)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
        return
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for line in (headers, *rows):
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def print_fields(console: Console, fields: Sequence[tuple[str, str]]) -> None:
    """`name  value` lines: styled on a terminal, plain otherwise."""
    width = max(len(name) for name, _ in fields)
    if console.is_terminal:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for name, value in fields:
            grid.add_row(Text(name), Text(value))
        console.print(grid)
        return
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {value}")


def echo_json(obj: object) -> None:
    """`obj` as indented JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def when(moment: datetime | None) -> str:
    """A moment in UTC to the second, or nothing."""
    if moment is None:
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def size(value: object) -> str:
    """A byte count in decimal units (`4.1 GB`), or nothing for a non-number."""
    if not isinstance(value, int | float):
        return ""
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1000:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"


def duration(seconds: float) -> str:
    """A whole duration as `42s`, `3m07s` or `2h05m`."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
