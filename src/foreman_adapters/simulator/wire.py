"""Raw ASGI for the simulator: one request/response exchange, written byte for byte as Ollama does.

Ollama's server is Go (gin); the helpers here reproduce what its clients can observe: compact
JSON, `application/json; charset=utf-8`, NDJSON streams flushed one line per message, errors as
`{"error": "…"}`, and the Go JSON decoder's wording for bad request bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_UTF8 = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"
NDJSON = "application/x-ndjson"
TEXT_UTF8 = "text/plain; charset=utf-8"
TEXT_PLAIN = "text/plain"

RESET_EXTENSION = "foreman.simulator.reset_connection"
"""Scope extension (a callable) that resets the TCP connection (RST); set by `serve_simulator`."""
CLOSE_EXTENSION = "foreman.simulator.close_connection"
"""Scope extension (a callable) that closes the TCP connection (FIN), whatever was sent."""


class SimulatedReset(ConnectionResetError):
    """Raised inside the app to stand for a reset connection when no socket can be reset.

    Under `httpx.ASGITransport` it propagates to the client unchanged, as an OSError.
    """


class SimulatedRefusal(ConnectionRefusedError):
    """Raised inside the app to stand for a refused connection when the simulator is down."""


class BadRequest(Exception):
    """A request Ollama would refuse: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def encode(value: Any) -> bytes:
    """Compact JSON, UTF-8, as Go's encoder writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(eq=False)
class Exchange:
    """One HTTP request and the response being written for it."""

    scope: Scope
    receive: Receive
    send: Send
    body: bytes = b""
    started: bool = False

    @property
    def method(self) -> str:
        """The request method."""
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        """The request path, without the query string."""
        return str(self.scope["path"])

    async def read_body(self) -> bool:
        """Read the whole request body; False if the client went away first."""
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return False
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.body = b"".join(chunks)
                return True

    async def wait_disconnect(self) -> None:
        """Return once the client has gone (or the response is complete)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = JSON_UTF8,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send a complete response."""
        raw = [(b"content-length", str(len(body)).encode())]
        if content_type is not None:
            raw.insert(0, (b"content-type", content_type.encode()))
        raw += [(k.lower().encode(), v.encode()) for k, v in headers]
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def reply_json(
        self, value: Any, status: int = 200, content_type: str = JSON_UTF8
    ) -> None:
        """Send one JSON object."""
        await self.reply(status, encode(value), content_type)

    async def reply_error(self, status: int, message: str) -> None:
        """Send Ollama's error shape."""
        await self.reply_json({"error": message}, status)

    async def start_stream(
        self, content_type: str = NDJSON, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Send the headers of a chunked response (no Content-Length)."""
        self.started = True
        raw = [(b"content-type", content_type.encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers]
        await self.send({"type": "http.response.start", "status": 200, "headers": raw})

    async def write_line(self, value: Any) -> None:
        """Send one NDJSON line; each line is flushed as its own chunk."""
        await self.send(
            {"type": "http.response.body", "body": encode(value) + b"\n", "more_body": True}
        )

    async def end_stream(self) -> None:
        """Finish a chunked response."""
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def reset_connection(self, *, refused: bool = False) -> None:
        """Reset the TCP connection now (RST).

        Without a socket to reset (under `httpx.ASGITransport`), raise `SimulatedRefusal` when
        `refused`, else `SimulatedReset`.
        """
        reset = (self.scope.get("extensions") or {}).get(RESET_EXTENSION)
        if reset is not None:
            reset()
        elif refused:
            raise SimulatedRefusal("simulated connection refused")
        else:
            raise SimulatedReset("simulated connection reset")

    def close_connection(self) -> None:
        """Close the TCP connection now, in the middle of the response, as a dying server's
        kernel does (everything sent arrives, then EOF); without a socket, raise `SimulatedReset`.
        """
        close = (self.scope.get("extensions") or {}).get(CLOSE_EXTENSION)
        if close is None:
            raise SimulatedReset("simulated connection close mid-response")
        close()


_GO_KINDS = {str: "string", bool: "bool", int: "number", float: "number", list: "array"}


def go_kind(value: Any) -> str:
    """How Go's decoder names a JSON value's kind in its errors."""
    if isinstance(value, dict):
        return "object"
    return _GO_KINDS.get(type(value), "value")


def decode_request(
    body: bytes,
    go_type: str,
    fields: dict[str, type | tuple[type, ...]],
    *,
    package: str = "api",
    empty: str = "missing request body",
) -> dict[str, Any]:
    """Parse a request body as Ollama does, raising `BadRequest` with Go's wording.

    `fields` lists the fields whose JSON type Ollama's struct constrains (name → Python type);
    `package` qualifies the Go type, and `empty` is the answer to an empty body (the native
    handlers say "missing request body", the compatibility middlewares pass on Go's "EOF").
    """
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise BadRequest(400, empty)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(400, go_syntax_error(text, exc.pos)) from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest(
            400,
            f"json: cannot unmarshal {go_kind(value)} into Go value of type {package}.{go_type}",
        )
    for name, expected in fields.items():
        field_value = value.get(name)
        if field_value is None:
            continue
        if not isinstance(field_value, expected) or (
            isinstance(field_value, bool) and bool not in _as_tuple(expected)
        ):
            go_field_type = go_kind(_example_of(expected))
            raise BadRequest(
                400,
                f"json: cannot unmarshal {go_kind(field_value)} into Go struct field "
                f"{go_type}.{name} of type {go_field_type}",
            )
    return value


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _example_of(expected: type | tuple[type, ...]) -> Any:
    first = _as_tuple(expected)[0]
    return {str: "", bool: False, int: 0, float: 0.0, list: [], dict: {}}.get(first)


def go_syntax_error(text: str, position: int) -> str:
    """Go's decoder message for malformed JSON, near enough: clients only show it."""
    if position >= len(text.rstrip()):
        return "unexpected EOF"
    return f"invalid character {text[position]!r} looking for beginning of value"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

DEFAULT_KEEP_ALIVE = 300.0
"""Ollama keeps a model loaded for 5 minutes after its last request unless told otherwise."""


def parse_keep_alive(value: Any) -> float | None:
    """`keep_alive` in seconds as Ollama reads it: a number is seconds, a string a Go duration;
    negative means forever (None). Absent means the default, 5 minutes."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise BadRequest(400, "json: cannot unmarshal bool into Go struct field .keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _go_duration_seconds(value)
    else:
        raise BadRequest(400, f"json: cannot unmarshal {go_kind(value)} into keep_alive")
    return None if seconds < 0 else seconds


def _go_duration_seconds(text: str) -> float:
    """Go's `time.ParseDuration`, in seconds."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise BadRequest(400, f'time: invalid duration "{text}"')
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    return -seconds if text.startswith("-") else seconds
