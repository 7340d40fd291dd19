"""The views foreman's Python client returns: a job, its artifacts, a page of jobs.

Each is built from the server's JSON by `from_json`, leniently: a field left out takes its
empty value, so a newer server's extra fields and an older one's missing ones both read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINISHED_STATES = frozenset({"done", "failed", "cancelled"})
"""Job states no transition leaves."""


@dataclass(frozen=True, slots=True)
class ArtifactView:
    """One artifact of a job as the server describes it: inline `data`, or a `url` to fetch."""

    name: str
    content_type: str
    size: int | None = None
    data: str | None = None
    encoding: str | None = None
    url: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ArtifactView:
        """The view of one entry of a job's `artifacts` list."""
        return cls(
            name=str(obj.get("name", "")),
            content_type=str(obj.get("content_type", "application/octet-stream")),
            size=_int_or_none(obj.get("size")),
            data=_str_or_none(obj.get("data")),
            encoding=_str_or_none(obj.get("encoding")),
            url=_str_or_none(obj.get("url")),
        )

    @property
    def inline(self) -> bool:
        """True when the content came with the job; False when it must be fetched by `url`."""
        return self.data is not None

    def content(self) -> bytes | None:
        """The inline bytes (base64-decoded when so encoded); None when only a `url` is given."""
        if self.data is None:
            return None
        if self.encoding == "base64":
            try:
                return base64.b64decode(self.data)
            except (binascii.Error, ValueError):
                return None
        return self.data.encode()


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the server reported it (`GET /jobs/{id}`); `raw` is the JSON object itself."""

    job_id: str
    kind: str
    model: str
    state: str
    priority: int = 0
    attempts: int = 0
    queue_position: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    artifacts: list[ArtifactView] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobView:
        """The view of a job object; fields the server left out take their empty value."""
        result = obj.get("result")
        return cls(
            job_id=str(obj.get("job_id", "")),
            kind=str(obj.get("kind", "chat")),
            model=str(obj.get("model", "")),
            state=str(obj.get("state", "")),
            priority=_int_or_none(obj.get("priority")) or 0,
            attempts=_int_or_none(obj.get("attempts")) or 0,
            queue_position=_int_or_none(obj.get("queue_position")),
            created_at=_timestamp(obj.get("created_at")),
            started_at=_timestamp(obj.get("started_at")),
            finished_at=_timestamp(obj.get("finished_at")),
            error=_str_or_none(obj.get("error")),
            result=result if isinstance(result, dict) else None,
            artifacts=[
                ArtifactView.from_json(item)
                for item in obj.get("artifacts") or []
                if isinstance(item, Mapping)
            ],
            raw=dict(obj),
        )

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self.state in FINISHED_STATES

    def artifact(self, name: str) -> ArtifactView | None:
        """The artifact of this name, if the job has one."""
        return next((item for item in self.artifacts if item.name == name), None)

    @property
    def completion(self) -> str | None:
        """The generated text when it is at hand: the inline `completion` artifact, else the
        text of `result`. None before the job is done (use `client.completion(job)` to fetch
        a completion too large to be inlined)."""
        artifact = self.artifact("completion")
        content = artifact.content() if artifact is not None else None
        if content is not None:
            return content.decode("utf-8", errors="replace")
        return _result_text(self.result)


@dataclass(frozen=True, slots=True)
class JobListing:
    """One page of `GET /jobs`, newest first; `next_cursor` is None on the last page."""

    jobs: list[JobView]
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobListing:
        """The view of a `GET /jobs` answer."""
        jobs = [JobView.from_json(item) for item in obj.get("jobs") or [] if isinstance(item, dict)]
        return cls(jobs=jobs, next_cursor=_str_or_none(obj.get("next_cursor")))


def _result_text(result: dict[str, Any] | None) -> str | None:
    if not result:
        return None
    message = result.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    response = result.get("response")
    return response if isinstance(response, str) else None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
