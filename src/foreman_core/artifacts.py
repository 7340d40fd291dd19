"""How artifacts appear in a job object and a webhook event: inlined when small, else a URL."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from foreman_core.job import Artifact

INLINE_LIMIT = 262_144
"""Artifacts up to this many bytes (256 KiB) are inlined in `data`; larger ones get a `url`."""

_TEXT_APPLICATION_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/xml",
        "application/javascript",
        "application/yaml",
    }
)


def is_text(content_type: str) -> bool:
    """Whether a content type holds text: `text/*`, JSON, XML and their `+json`/`+xml` kin."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_APPLICATION_TYPES
        or media_type.endswith(("+json", "+xml"))
    )


def artifact_url(public_url: str, job_id: str, name: str) -> str:
    """The absolute URL that serves an artifact's raw bytes."""
    return f"{public_url.rstrip('/')}/jobs/{job_id}/artifacts/{quote(name, safe='')}"


def artifact_view(job_id: str, artifact: Artifact, public_url: str) -> dict[str, Any]:
    """One artifact as the job object shows it."""
    view: dict[str, Any] = {
        "name": artifact.name,
        "content_type": artifact.content_type,
        "size": len(artifact.data),
    }
    if len(artifact.data) > INLINE_LIMIT:
        view["url"] = artifact_url(public_url, job_id, artifact.name)
        return view
    if is_text(artifact.content_type):
        try:
            view["data"] = artifact.data.decode()
            return view
        except UnicodeDecodeError:
            pass  # labelled text but not UTF-8: base64 keeps the bytes intact
    view["data"] = base64.b64encode(artifact.data).decode()
    view["encoding"] = "base64"
    return view


def artifact_views(job_id: str, artifacts: list[Artifact], public_url: str) -> list[dict[str, Any]]:
    """The `artifacts` list of a job object: name, content_type, size, and `data` or `url`."""
    return [artifact_view(job_id, artifact, public_url) for artifact in artifacts]
