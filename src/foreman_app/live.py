"""`LiveResponse`: a sync job's response, fed by the worker, read by the handler that waits.

It is the app's `WaitingClient` (`foreman_core.ports`): the worker says why it ended a job in
an error of its own, and this module picks the HTTP status for the reason and writes the error
in Ollama's shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar.status_codes import (
    HTTP_409_CONFLICT,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from foreman_app.errors import JSON, error_body
from foreman_core.errors import TargetRejected
from foreman_core.ports import AbortReason

ABORT_STATUS = {
    AbortReason.CANCELLED: HTTP_409_CONFLICT,
    AbortReason.SHUTDOWN: HTTP_503_SERVICE_UNAVAILABLE,
    AbortReason.TARGET_FAILED: HTTP_502_BAD_GATEWAY,
    AbortReason.UNSTORED: HTTP_500_INTERNAL_SERVER_ERROR,
    AbortReason.FAULT: HTTP_500_INTERNAL_SERVER_ERROR,
}
"""The status of a response the worker ends in an error before its body began, by reason."""


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """The target answered 2xx: relay a body with this status and content type."""

    status: int
    content_type: str


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """The job ended before any body byte: answer with exactly this.

    The target's status, body and content type when it rejected the request; otherwise
    `ABORT_STATUS` for the worker's reason, with the body `{"error":"…"}`.
    """

    status: int
    body: bytes
    content_type: str


class LiveResponse:
    """One sync job's response, handed from the worker to the HTTP handler that waits for it."""

    def __init__(self) -> None:
        self._outcome: ResponseStarted | ResponseFailed | None = None
        self._decided = asyncio.Event()
        self._finished = asyncio.Event()
        # Unbounded on purpose: a slow client must never hold the GPU; responses are text.
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._abandoned = False

    @property
    def started(self) -> bool:
        """True once the body began: a failure from now on can only end the stream."""
        return isinstance(self._outcome, ResponseStarted)

    @property
    def finished(self) -> bool:
        """True once the last byte (or the failure) has been handed over."""
        return self._finished.is_set()

    # -- read by the handler ---------------------------------------------------------------

    async def start(self) -> ResponseStarted | ResponseFailed:
        """Wait until the target has answered (headers) or the job ended without a body."""
        await self._decided.wait()
        assert self._outcome is not None
        return self._outcome

    async def complete(self) -> tuple[ResponseStarted | ResponseFailed, bytes]:
        """Wait for the whole response: how it began (or failed), and the body, if it began."""
        await self._finished.wait()
        assert self._outcome is not None
        parts = []
        while not self._chunks.empty():
            chunk = self._chunks.get_nowait()
            if chunk is None:
                self._chunks.put_nowait(None)  # a second reader sees the end too
                break
            parts.append(chunk)
        return self._outcome, b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the target sends it, each chunk the moment it arrives.

        Empty unless `start()` gave `ResponseStarted`. A failure after the first byte ends the
        body with one line `{"error":"…"}\\n`, as Ollama does.
        """
        await self._decided.wait()
        if not self.started:
            return
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                self._chunks.put_nowait(None)  # a second reader sees the end too
                return
            yield chunk

    def abandon(self) -> None:
        """The handler is done with the response (it was sent, or its client left): drop what
        is buffered and whatever still comes."""
        self._abandoned = True
        while not self._chunks.empty():
            self._chunks.get_nowait()

    # -- fed by the worker (`WaitingClient`) -------------------------------------------------

    def begin(self, status: int, content_type: str) -> None:
        """The target answered 2xx; its body follows."""
        self._outcome = ResponseStarted(status, content_type)
        self._decided.set()

    def send(self, chunk: bytes) -> None:
        """The body's next bytes."""
        if not self._abandoned:
            self._chunks.put_nowait(chunk)

    def end(self) -> None:
        """The body is complete."""
        self._chunks.put_nowait(None)
        self._finished.set()

    def reject(self, rejection: TargetRejected) -> None:
        """The target refused the request: answer with its status, body and content type."""
        self._fail(ResponseFailed(rejection.status, rejection.body, rejection.content_type))

    def abort(self, reason: AbortReason, message: str) -> None:
        """foreman's error: a JSON error with the reason's status before the body, an error
        line at the end of it after."""
        if self.started:
            self.send(error_body(message) + b"\n")
            self.end()
        else:
            self._fail(ResponseFailed(ABORT_STATUS[reason], error_body(message), JSON))

    def _fail(self, failed: ResponseFailed) -> None:
        self._outcome = failed
        self._decided.set()
        self._finished.set()
