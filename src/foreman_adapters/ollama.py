"""`OllamaTarget`: the InferenceTarget port over an httpx transport, plus raw relaying for
proxied routes.

Failures become the core's errors (`foreman_core.errors`):
- nothing came back — connect refused or timed out, reset or read timeout before the response
  head, the server closing without answering — `TargetUnreachable`;
- 503 or 429 — `TargetBusy` (with `Retry-After` seconds when given);
- any other non-2xx — `TargetRejected`, keeping status, body and content type;
- a transport failure after the response began — `TargetBrokeStream`.

Transport failures are httpx's `TransportError`s; an `OSError` is treated the same, since
`httpx.ASGITransport` lets an in-process app's connection errors through unwrapped.

The target sends httpx `Request`s straight to the transport it is given, without an
`httpx.AsyncClient` above it: the client's layer (URL and header merging, cookies, auth and
redirect machinery) cost about 0.25 ms of CPU per call, none of which a relay needs (ADR 0008).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx

from foreman_core.errors import (
    TargetBrokeStream,
    TargetBusy,
    TargetRejected,
    TargetUnreachable,
)

KIND_PATHS = {"chat": "/api/chat", "generate": "/api/generate"}
BUSY_STATUSES = frozenset({429, 503})
CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection to Ollama. There is no read timeout: a model may think for
minutes before its first token."""
USER_AGENT = "foreman"
_TRANSPORT_ERRORS = (httpx.TransportError, OSError)


@dataclass(slots=True)
class StreamedResponse:
    """A 2xx response of the target, being received (the `TargetResponse` port)."""

    status: int
    content_type: str
    response: httpx.Response

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises `TargetBrokeStream` if the transfer fails."""
        return _raw_chunks(self.response)


@dataclass(slots=True)
class RawResponse:
    """Any response of the target, relayed as it is."""

    status: int
    content_type: str | None
    headers: httpx.Headers
    response: httpx.Response

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises `TargetBrokeStream` if the transfer fails."""
        return _raw_chunks(self.response)


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """Undecoded body bytes, each chunk as soon as it arrives: the transport's stream itself,
    without `aiter_raw`'s layer, whose byte counting and re-chunking a relay does not use."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        async for chunk in stream:
            yield chunk
    except _TRANSPORT_ERRORS as exc:
        raise TargetBrokeStream(f"the target's response broke off: {_describe(exc)}") from exc


class OllamaTarget:
    """The Ollama host at `base_url`, reached through an injected httpx transport (tests hand
    it an `httpx.ASGITransport` over the simulator).

    Requests carry only what Ollama needs: the target's own Host, `Content-Type:
    application/json` with a body, `Authorization: Bearer <token>` when a token is set (else
    `Basic` for a `user:password@` in `base_url`), and `Accept-Encoding: identity` so relayed
    bytes are the bytes Ollama wrote. Connecting may
    take `connect_timeout` seconds; reading has no limit.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        token: str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        url = httpx.URL(base_url)
        self._transport = transport
        self.base_url = base_url
        self._root = str(url.copy_with(username=None, password=None)).rstrip("/")
        self._host = url.netloc.decode("ascii")
        authorization = f"Bearer {token}" if token else _basic_auth(url)
        self._headers = _own_headers(self._host, authorization, has_body=False)
        self._headers_with_body = _own_headers(self._host, authorization, has_body=True)
        self._urls: dict[str, httpx.URL] = {}
        self._timeouts = {"connect": connect_timeout, "read": None, "write": None, "pool": None}

    @asynccontextmanager
    async def open(self, kind: str, body: bytes) -> AsyncIterator[StreamedResponse]:
        """POST a chat or generate request and receive its 2xx response (InferenceTarget port).

        Entering raises `TargetUnreachable`, `TargetBusy` or `TargetRejected`; leaving the
        block early closes the response, which aborts the request at the target.
        """
        path = KIND_PATHS.get(kind)
        if path is None:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {sorted(KIND_PATHS)}")
        response = await self._send("POST", path, body)
        try:
            if not response.is_success:
                raise await _http_error(response)
            content_type = response.headers.get("content-type", "application/json")
            yield StreamedResponse(response.status_code, content_type, response)
        finally:
            await response.aclose()

    @asynccontextmanager
    async def relay(
        self, method: str, path: str, body: bytes | None = None
    ) -> AsyncIterator[RawResponse]:
        """Send any request and hand back the response whatever its status, body unread.

        Raises `TargetUnreachable` if no response came back.
        """
        response = await self._send(method, path, body)
        try:
            yield RawResponse(
                response.status_code,
                response.headers.get("content-type"),
                response.headers,
                response,
            )
        finally:
            await response.aclose()

    async def get_json(self, path: str) -> Any:
        """GET `path` and parse its JSON; non-2xx raises as `open` does."""
        return await self._json("GET", path, None)

    async def post_json(self, path: str, payload: Any) -> Any:
        """POST `payload` as JSON to `path` and parse the JSON answer."""
        return await self._json("POST", path, json.dumps(payload).encode())

    async def version(self) -> dict[str, Any]:
        """GET /api/version: `{"version": "0.x.y"}`."""
        return cast(dict[str, Any], await self.get_json("/api/version"))

    async def tags(self) -> dict[str, Any]:
        """GET /api/tags: the installed models."""
        return cast(dict[str, Any], await self.get_json("/api/tags"))

    async def ps(self) -> dict[str, Any]:
        """GET /api/ps: the loaded models."""
        return cast(dict[str, Any], await self.get_json("/api/ps"))

    async def warm(self, model: str) -> None:
        """Load an embedding model and keep it loaded for good.

        An /api/embed with empty input loads the model and answers `{"embeddings": []}`; it works
        for embedding-only models, which refuse /api/generate.
        """
        await self.post_json("/api/embed", {"model": model, "input": "", "keep_alive": -1})

    async def _json(self, method: str, path: str, body: bytes | None) -> Any:
        response = await self._send(method, path, body)
        try:
            content = await _read_all(response)
        finally:
            await response.aclose()
        if not response.is_success:
            raise _classify(response, content)
        try:
            return json.loads(content)
        except ValueError:
            content_type = response.headers.get("content-type", "")
            raise TargetRejected(response.status_code, content, content_type) from None

    async def _send(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        """Send a request and return the response with its body unread."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._root + path)
        # Given as a stream, the body skips httpx's encoding step; the headers it would add
        # (Host, Content-Length) are ours already.
        if body is None:
            headers = self._headers
        else:
            headers = [*self._headers_with_body, (b"Content-Length", b"%d" % len(body))]
        request = httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(body or b""),
            extensions={"timeout": self._timeouts},
        )
        try:
            return await self._transport.handle_async_request(request)
        except _TRANSPORT_ERRORS as exc:
            raise TargetUnreachable(f"target {self._host} unreachable: {_describe(exc)}") from exc


def _own_headers(
    host: str, authorization: str | None, *, has_body: bool
) -> list[tuple[bytes, bytes]]:
    """The headers of every request to the target but a body's Content-Length."""
    headers = {"Host": host, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if has_body:
        headers["Content-Type"] = "application/json"
    if authorization:
        headers["Authorization"] = authorization
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers.items()]


def _basic_auth(url: httpx.URL) -> str | None:
    """`Basic …` for a `user:password@` in the target's URL (a proxy in front of Ollama)."""
    if not url.username and not url.password:
        return None
    credentials = f"{url.username}:{url.password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


async def _read_all(response: httpx.Response) -> bytes:
    """The whole body; a failure after the head is a broken stream."""
    try:
        return await response.aread()
    except _TRANSPORT_ERRORS as exc:
        raise TargetBrokeStream(f"the target's response broke off: {_describe(exc)}") from exc


async def _http_error(response: httpx.Response) -> TargetBusy | TargetRejected:
    """The error for a non-2xx response, its body read."""
    return _classify(response, await _read_all(response))


def _classify(response: httpx.Response, body: bytes) -> TargetBusy | TargetRejected:
    if response.status_code in BUSY_STATUSES:
        return TargetBusy(response.status_code, body, _retry_after(response.headers))
    content_type = response.headers.get("content-type", "application/json")
    return TargetRejected(response.status_code, body, content_type)


def _retry_after(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form is rare from Ollama and ignored."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    """An error's class and message, never empty (httpx errors often have no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
