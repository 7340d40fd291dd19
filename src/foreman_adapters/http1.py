"""`Http1Transport`: httpx's client API over foreman's own HTTP/1.1 connections (ADR 0013).

The adapters speak httpx — `OllamaTarget` hands httpx `Request`s to a transport, the webhook
sender uses an `httpx.AsyncClient` — so tests give them `httpx.ASGITransport` over a fake; for
real traffic foreman gives them this transport. It keeps a pool of keep-alive connections, each
an asyncio protocol that parses responses with `httptools` (the parser uvicorn serves with);
a relay through it costs about half the CPU of one through aiohttp. It speaks plain HTTP/1.1
and HTTPS (with httpx's default certificate checks) and raises httpx's exception classes, so
callers cannot tell it from httpx's own transport.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import httptools
import httpx

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""Looks up a host: the addresses to try, in order (OSError when there are none)."""
Origin = tuple[str, str, int]

PAUSE_READING_AT = 1 << 20
"""Bytes of body received but not yet taken before the connection stops reading the socket."""
DEFAULT_PORTS = {"http": 80, "https": 443}


class Http1Transport(httpx.AsyncBaseTransport):
    """Sends httpx requests on pooled HTTP/1.1 connections: up to `max_connections` requests
    at once (more wait for a slot), idle connections kept `keepalive_expiry` seconds for reuse,
    host names looked up by `resolve` (the event loop's resolver when None).

    Honours httpx's connect and read timeouts (read: each wait for the response's head or its
    next data; an unset one is no limit). Redirects are never followed and bodies are passed on
    undecoded; the httpx client above decides both. Cookies are neither stored nor sent. A
    request body is sent whole, with its length.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        resolve: Resolve | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._keepalive_expiry = keepalive_expiry
        self._resolve = resolve
        self._idle: dict[Origin, list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the response's body is left to stream."""
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or DEFAULT_PORTS[url.scheme])
        timeouts = request.extensions.get("timeout", {})
        message = _request_bytes(request, await request.aread())
        await self._slots.acquire()
        connection = None
        try:
            connection = self._reusable(origin) or await self._connect(
                origin, timeouts.get("connect"), request
            )
            connection.send(message, request)
            await connection.head(timeouts.get("read"))
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        return httpx.Response(
            status_code=connection.status,
            headers=connection.headers,
            stream=_ResponseBody(self, connection, origin, timeouts.get("read")),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def aclose(self) -> None:
        """Close every idle connection (those in use close as their responses do)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _reusable(self, origin: Origin) -> Connection | None:
        """The most recently used idle connection to `origin` that is still open and fresh."""
        idle = self._idle.get(origin)
        stale_before = time.monotonic() - self._keepalive_expiry
        while idle:
            connection = idle.pop()
            fresh = connection.reusable and connection.idle_since >= stale_before
            if fresh and not connection.has_unread_bytes():
                return connection
            connection.close()
        return None

    def _give_back(self, connection: Connection, origin: Origin) -> None:
        """Keep a connection whose response ended cleanly for the next request; close any other."""
        self._slots.release()
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()

    async def _connect(
        self, origin: Origin, timeout: float | None, request: httpx.Request
    ) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                addresses = [host] if self._resolve is None else await self._resolve(host, port)
                failure = OSError(f"{host!r} resolves to no address")
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            Connection,
                            address,
                            port,
                            ssl=tls,
                            server_hostname=None if tls is None else host,
                        )
                        return connection
                    except OSError as exc:
                        failure = exc
                raise failure
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(_message(exc), request=request) from exc

    def _tls_context(self) -> ssl.SSLContext:
        """httpx's default verification (certifi's CA bundle, or SSL_CERT_FILE), made once."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: sends a request, parses its response as the bytes come in, and
    hands the body over chunk by chunk (each chunk of a chunked body whole, as the server framed
    it: Ollama writes one NDJSON line per chunk)."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._request: httpx.Request | None = None
        self._head_only = False
        self._got_head = False
        self._complete = False
        self._keep_alive = False
        self._closed = False
        self._error: httpx.TransportError | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._chunk: list[bytes] | None = None
        self._length_known = False
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def reusable(self) -> bool:
        """The last response ended cleanly and both sides keep the connection open."""
        transport = self._transport
        ended_cleanly = self._complete and self._keep_alive and not self._closed
        return ended_cleanly and transport is not None and not transport.is_closing()

    def has_unread_bytes(self) -> bool:
        """Whether the socket has something the event loop has not read yet. On an idle
        connection that is the server closing it (or stray bytes): either way, not reusable."""
        sock = None if self._transport is None else self._transport.get_extra_info("socket")
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def send(self, message: bytes, request: httpx.Request) -> None:
        """Write a request (head and body) and get ready for its response."""
        assert self._transport is not None
        self._request = request
        self._head_only = request.method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.reason, self.headers = 0, b"", []
        self._got_head = self._complete = self._keep_alive = self._length_known = False
        self._chunk = None
        self._body.clear()  # what the last response's reader left unread
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        self._transport.write(message)

    async def head(self, timeout: float | None) -> None:
        """Wait for the response's status line and headers."""
        while not self._got_head:
            self._raise_error(during_body=False)
            await self._wait(timeout)

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive; ends when the response does."""
        while True:
            if self._body:
                piece = self._body.popleft()
                self._buffered -= len(piece)
                if self._paused and self._buffered < PAUSE_READING_AT:
                    self._paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                yield piece
            elif self._complete:
                return
            else:
                self._raise_error(during_body=True)
                await self._wait(timeout)

    def close(self) -> None:
        """Close the connection (a request in progress is aborted at the server)."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    async def _wait(self, timeout: float | None) -> None:
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await self._wakeup
            else:
                async with asyncio.timeout(timeout):
                    await self._wakeup
        except TimeoutError:
            raise httpx.ReadTimeout(
                "timed out waiting for the response", request=self._request
            ) from None
        finally:
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _raise_error(self, *, during_body: bool) -> None:
        if self._error is None and self._closed:
            message = "server closed the connection"
            error = httpx.ReadError if during_body else httpx.RemoteProtocolError
            self._error = error(message, request=self._request)
        if self._error is not None:
            raise self._error

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()
        if self._buffered >= PAUSE_READING_AT and not self._paused and not self._closed:
            self._paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is None and self._got_head and not self._complete and self._ends_at_close():
            self._complete = True
        elif not self._complete and exc is not None:
            error = httpx.ReadError if self._got_head else httpx.RemoteProtocolError
            self._fail(error(_message(exc)))
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._length_known = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim response: the real one follows
            self.reason, self.headers, self._length_known = b"", [], False
            return
        self.status = status
        self._got_head = True
        if self._head_only:  # no body follows, whatever Content-Length says
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    def on_chunk_header(self) -> None:
        self._chunk = []

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        if self._chunk is not None:
            self._chunk.append(body)
        else:
            self._take(body)

    def on_chunk_complete(self) -> None:
        if self._chunk:
            self._take(b"".join(self._chunk))
        self._chunk = None

    def on_message_complete(self) -> None:
        if self._got_head and not self._complete:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
            self._wake()

    def _take(self, piece: bytes) -> None:
        self._body.append(piece)
        self._buffered += len(piece)
        self._wake()

    def _ends_at_close(self) -> bool:
        """The body has no length and no chunks: it runs until the server closes."""
        return not self._length_known and self.status not in (204, 304)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            error.request = self._request  # type: ignore[assignment]
            self._error = error
        self._wake()


class _ResponseBody(httpx.AsyncByteStream):
    """A connection's response body as httpx streams it; closing it returns the connection to
    the pool when the body was read to its end, and closes it (aborting the request at the
    server) when it was not."""

    def __init__(
        self,
        transport: Http1Transport,
        connection: Connection,
        origin: Origin,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection: Connection | None = connection
        self._origin = origin
        self._timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._connection is None:
            raise httpx.StreamClosed()
        return self._connection.body(self._timeout)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._transport._give_back(connection, self._origin)


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body, ready to write; a body always goes with its length."""
    url = request.url
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), url.raw_path)]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue
        has_length = has_length or lowered == b"content-length"
        lines.append(name + b": " + value)
    if body and not has_length:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"\r\n")
    return b"\r\n".join(lines) + body


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
