"""Faults the simulator injects into its next chat and generate requests."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HttpFailure:
    """Answer with this HTTP error instead of generating."""

    status: int
    body: bytes
    content_type: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class MidStreamFailure:
    """Fail a streamed generation after `after_chunks` lines.

    With `error`, the stream ends with Ollama's in-band `{"error": …}` line (status stays 200);
    without it, the connection closes mid-body, as when the Ollama process dies.
    """

    after_chunks: int = 1
    error: str | None = None


@dataclass
class Faults:
    """The armed faults, consumed one per request in arrival order."""

    drops: int = 0
    failures: deque[HttpFailure] = field(default_factory=deque)
    mid_stream: deque[MidStreamFailure] = field(default_factory=deque)
    down: bool = False

    def take_drop(self) -> bool:
        """Whether this request's connection is to be dropped before any response."""
        if self.drops > 0:
            self.drops -= 1
            return True
        return False

    def take_failure(self) -> HttpFailure | None:
        """The HTTP error this request gets, if one is armed."""
        return self.failures.popleft() if self.failures else None

    def take_mid_stream(self) -> MidStreamFailure | None:
        """The mid-stream failure this generation suffers, if one is armed."""
        return self.mid_stream.popleft() if self.mid_stream else None

    def clear(self) -> None:
        """Disarm everything."""
        self.drops = 0
        self.failures.clear()
        self.mid_stream.clear()
        self.down = False
