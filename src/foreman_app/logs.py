"""`DeferredStreamHandler`: log lines written a moment after they are logged on the event loop.

uvicorn logs a request's access line when the response starts, in the middle of sending it:
formatting the line and writing it to stderr then delays the response by ~0.1 ms. On the event
loop this handler only keeps the record, and writes what it keeps `WRITE_DELAY` later; elsewhere
(other threads, no loop) it writes at once. Lines keep their order, and `flush()` (called at
exit by `logging.shutdown`) writes whatever is kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO

WRITE_DELAY = 0.002
"""Seconds a line logged on the event loop waits before it is written. With a client that sends
its next request the moment it has an answer, a write just after the answer would delay that
request; a moment later it falls, most of the time, into the wait for Ollama's answer."""


class DeferredStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose writes on the event loop wait `WRITE_DELAY` seconds."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._kept: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write([record])
            return
        if not self._kept:
            loop.call_later(WRITE_DELAY, self.flush)
        self._kept.append(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            kept, self._kept = self._kept, []
        self._write(kept)

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        with self.lock:  # type: ignore[union-attr]
            for record in records:
                try:
                    self.stream.write(self.format(record) + self.terminator)
                except Exception:
                    self.handleError(record)
            try:
                self.stream.flush()
            except Exception:
                self.handleError(records[-1])
