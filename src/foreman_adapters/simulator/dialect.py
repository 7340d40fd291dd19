"""Ollama's compatibility layers, built as Ollama builds them: middleware over a native route.

Ollama serves `/v1/…` (OpenAI) and `/v1/messages` (Anthropic) with gin middleware in front of
its native handlers: the middleware turns the dialect's request into a native one and swaps in
a response writer that turns everything the native handler writes into the dialect. The
simulator does the same, so a dialect request runs the native machinery unchanged (the GPU,
its swaps, the hold gate, the faults) and only the translation differs per dialect:

- a `DialectRoute` names the translation (request → `Translation`), the native handler and the
  dialect's error body;
- a `Translation` carries the native request and the writer's two halves: `whole` for a
  response sent in one piece, and `frames` (server-sent events) when the client streams;
- `DialectExchange` is the exchange the native handler writes to: a non-200 reply becomes the
  dialect's error, a 200 reply goes through `whole` (or `frames`), each NDJSON line through
  `frames`.

Errors raised by the translation itself are sent as gin's `c.AbortWithStatusJSON` sends them
(`application/json; charset=utf-8`, no newline); errors the native handler answers pass the
writer, which re-encodes them as Go's `json.Encoder` does (`application/json`, a newline).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foreman_adapters.simulator.wire import (
    JSON_PLAIN,
    JSON_UTF8,
    NDJSON,
    BadRequest,
    Exchange,
    encode,
)

if TYPE_CHECKING:
    from foreman_adapters.simulator.app import SimulatedOllama

EVENT_STREAM = "text/event-stream"
DONE = b"data: [DONE]\n\n"
"""The OpenAI stream's last frame."""
STREAM_HEADERS = (("Cache-Control", "no-cache"), ("Connection", "keep-alive"))
"""Set up front by the Responses and Anthropic middlewares on a streamed request (errors too)."""

Native = dict[str, Any]
ErrorBody = Callable[[int, str], Any]
NativeHandler = Callable[["SimulatedOllama", Exchange], Awaitable[None]]


def data_frame(value: Any) -> bytes:
    """One unnamed server-sent event, as the OpenAI layer writes it."""
    return b"data: " + encode(value) + b"\n\n"


def event_frame(event: str, value: Any, *, sort_keys: bool = False) -> bytes:
    """One named server-sent event; `sort_keys` for payloads Go marshals from a map."""
    payload = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    return f"event: {event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True)
class Translation:
    """A dialect request turned native, with the writer for its response."""

    body: Mapping[str, Any]
    whole: Callable[[Native], Any]
    frames: Callable[[Native], list[bytes]] | None = None
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class DialectRoute:
    """One compatibility route: its middleware (`translate`) in front of a native handler."""

    translate: Callable[[SimulatedOllama, Exchange], Translation]
    native: NativeHandler
    error: ErrorBody

    async def __call__(self, sim: SimulatedOllama, ex: Exchange) -> None:
        """Translate the request, then let the native handler answer through the writer."""
        try:
            translation = self.translate(sim, ex)
        except BadRequest as exc:
            await ex.reply(exc.status, encode(self.error(exc.status, exc.message)), JSON_UTF8)
            return
        dialect = DialectExchange(ex, translation, self.error)
        try:
            await self.native(sim, dialect)
        except BadRequest as exc:
            if not dialect.started:
                await dialect.reply_error(exc.status, exc.message)


class DialectExchange(Exchange):
    """The exchange a native handler writes to, its output rewritten into a dialect."""

    def __init__(self, ex: Exchange, translation: Translation, error: ErrorBody) -> None:
        super().__init__(ex.scope, ex.receive, ex.send, encode(dict(translation.body)))
        self._translation = translation
        self._error = error

    async def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = JSON_UTF8,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send the dialect's form of a complete native response."""
        extra = [*self._translation.headers, *headers]
        if status != 200:
            payload = encode(self._error(status, native_error_message(body))) + b"\n"
            await super().reply(status, payload, JSON_PLAIN, extra)
        elif self._translation.frames is not None:
            frames = self._translation.frames(_parsed(body))
            await super().reply(200, b"".join(frames), EVENT_STREAM, extra)
        else:
            whole = encode(self._translation.whole(_parsed(body))) + b"\n"
            await super().reply(200, whole, JSON_PLAIN, extra)

    async def start_stream(
        self, content_type: str = NDJSON, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Start the event stream in place of the NDJSON one."""
        await super().start_stream(EVENT_STREAM, [*self._translation.headers, *headers])

    async def write_line(self, value: Any) -> None:
        """Send the events one native line becomes (none is fine: nothing is sent)."""
        frames = self._translation.frames(value) if self._translation.frames else []
        if frames:
            await self.send(
                {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
            )


def native_error_message(body: bytes) -> str:
    """The message of a native error body, read as the middlewares read it: the `error` field
    of a JSON object, or the raw text when the body is not JSON."""
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        message = value.get("error")
        return message if isinstance(message, str) else ""
    return body.decode("utf-8", errors="replace")


def _parsed(body: bytes) -> Native:
    value = json.loads(body) if body.strip() else {}
    return value if isinstance(value, dict) else {}


def go_number(value: float) -> float | int:
    """A float as Go's encoder writes it: `1.0` is `1`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def go_type_name(value: Any) -> str:
    """What Go's `%T` prints for a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def think_from_effort(effort: str) -> bool | str | None:
    """Ollama's `think` for an OpenAI reasoning effort (None: the model's default)."""
    if not effort:
        return None
    if effort == "none":
        return False
    aliases = {"minimal": "low", "xhigh": "max", "ultra": "max"}
    if effort in aliases:
        return aliases[effort]
    if effort in ("low", "medium", "high", "max"):
        return effort
    raise BadRequest(
        400,
        f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", '
        '"medium", "high", "xhigh", "ultra", "max", or "none")',
    )
