"""Deterministic model output: the words a simulated model says and the vectors it embeds.

Everything here is a pure function of its arguments, so a test can compute what the simulator
will answer and compare bytes.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

_WORDS = (
    "the", "queue", "model", "answer", "token", "drains", "before", "every", "swap", "quietly",
    "one", "GPU", "waits", "for", "its", "turn", "and", "then", "speaks", "in",
    "small", "steady", "pieces", "while", "a", "worker", "keeps", "order", "across", "restarts",
    "so", "nothing", "is", "lost", "when", "power", "fails", "at", "night", "because",
    "jobs", "are", "durable", "retries", "back", "off", "gently", "until", "they", "succeed",
    "or", "give", "up", "with", "clear", "reason", "webhooks", "report", "each", "change",
    "to", "whoever", "asked", "politely",
)  # fmt: skip

_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)
"""Ollama's expiry for keep_alive < 0: the largest Go duration (about 292 years)."""


def _seeded_bytes(*parts: str) -> Iterator[int]:
    """An endless, deterministic byte stream seeded by `parts`."""
    seed = "\x00".join(parts).encode()
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1


def reply_pieces(model: str, prompt: str, count: int) -> list[str]:
    """The `count` token pieces a model answers `prompt` with; joined they form a sentence."""
    if count <= 0:
        return []
    stream = _seeded_bytes("reply", model, prompt)
    words = [_WORDS[next(stream) % len(_WORDS)] for _ in range(count)]
    pieces = [words[0].capitalize()] + [" " + word for word in words[1:]]
    pieces[-1] += "."
    return pieces


def thinking_pieces(model: str, prompt: str, count: int) -> list[str]:
    """What a thinking model thinks before answering `prompt` (different words, same rules)."""
    return reply_pieces(model, "\x01think\x01" + prompt, count)


def embedding_vector(model: str, text: str, dimensions: int) -> list[float]:
    """A unit-length vector for `text`, rounded like float32 output."""
    stream = _seeded_bytes("embed", model, text)
    raw = []
    for _ in range(dimensions):
        (value,) = struct.unpack(">h", bytes((next(stream), next(stream))))
        raw.append(value / 32768.0)
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [float(f"{v / norm:.7g}") for v in raw]


def token_ids(text: str, limit: int = 16) -> list[int]:
    """A short, deterministic `context` of token ids for a generate response."""
    stream = _seeded_bytes("context", text)
    return [1 + (next(stream) << 8 | next(stream)) for _ in range(limit)]


def count_tokens(text: str) -> int:
    """A plausible prompt token count: one per word, at least one."""
    return max(1, len(text.split()))


def rfc3339(moment: datetime) -> str:
    """A timestamp as Go marshals `time.Time`: RFC 3339 with nanoseconds, zeros trimmed."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def now_rfc3339() -> str:
    """The current UTC time in Go's format."""
    return rfc3339(datetime.now(UTC))


def unix_seconds(stamp: str) -> int:
    """An RFC 3339 timestamp as Go's `time.Time.Unix()`; the current time if it is absent."""
    if not stamp:
        return int(time.time())
    return int(datetime.fromisoformat(stamp).timestamp())


def expiry(keep_alive_seconds: float | None, now: float | None = None) -> float | None:
    """When a model kept alive for `keep_alive_seconds` unloads (monotonic); None = never."""
    if keep_alive_seconds is None or keep_alive_seconds < 0:
        return None
    return (time.monotonic() if now is None else now) + keep_alive_seconds


def expiry_rfc3339(expires_at: float | None) -> str:
    """The wall-clock form of a monotonic expiry, as /api/ps shows it."""
    now = datetime.now(UTC)
    if expires_at is None:
        return rfc3339(now + _FOREVER)
    return rfc3339(now + timedelta(seconds=expires_at - time.monotonic()))
