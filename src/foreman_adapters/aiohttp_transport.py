"""`AiohttpTransport`: httpx's client API over an aiohttp connection pool (ADR 0008).

The adapters keep speaking httpx — `OllamaTarget` hands httpx `Request`s to a transport, the
webhook sender uses an `httpx.AsyncClient` — so tests give them `httpx.ASGITransport` over a
fake; for real traffic foreman gives them this transport, which costs about a third of the CPU
of httpx's own per request. It speaks plain HTTP/1.1 and HTTPS (with httpx's default
certificate checks) and raises httpx's exception classes, so callers cannot tell it from
httpx's transport.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

TimeoutKey = tuple[float | None, float | None]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests on one lazily opened `aiohttp.ClientSession`: up to
    `max_connections` at once, idle ones kept `keepalive_expiry` seconds for reuse, host names
    looked up by `resolver` (aiohttp's default when None).

    Honours httpx's connect and read timeouts (an unset one is no limit: there is no overall
    deadline). Redirects are never followed here and bodies are passed on undecoded; the httpx
    client above decides both. Cookies are neither stored nor sent.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[TimeoutKey, aiohttp.ClientTimeout] = {}
        self._tls: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the response's body is left to stream."""
        scheme = request.url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        body = await request.aread()  # a streamed body is sent whole, with its length
        with _as_httpx_error(request, during_body=False):
            response = await self._open_session().request(
                request.method,
                str(request.url),
                headers=_as_sent(request.headers),
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request.extensions.get("timeout", {})),
                ssl=self._tls_context() if scheme == "https" else True,
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_expiry,
                resolver=self._resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _tls_context(self) -> ssl.SSLContext:
        """httpx's default verification (certifi's CA bundle), made at the first HTTPS call."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    def _timeout(self, timeouts: dict[str, Any]) -> aiohttp.ClientTimeout:
        key = (timeouts.get("connect"), timeouts.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1]
            )
        return found


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx streams it: each chunk as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Chunk by chunk as the server framed them (Ollama writes one NDJSON line per HTTP
        # chunk), not whatever happens to be buffered: two lines sent 1 ms apart stay two.
        with _as_httpx_error(self._request, during_body=True):
            async for chunk, _ in self._response.content.iter_chunks():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; closed (which aborts the request
        # at the server) when it was not.
        self._response.release()


@contextmanager
def _as_httpx_error(request: httpx.Request, *, during_body: bool) -> Iterator[None]:
    """Re-raise aiohttp's failures as the httpx exceptions httpx's own transport would raise."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(_message(exc), request=request) from exc
    except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
        raise httpx.ReadTimeout(_message(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(_message(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        error = httpx.ReadError if during_body else httpx.NetworkError
        raise error(_message(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(_message(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(_message(exc), request=request) from exc


def _as_sent(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The headers with their names spelled as the caller spelled them (httpx lowercases them
    otherwise: receivers that look headers up case-sensitively exist), less a chunked
    Transfer-Encoding, since the body goes whole."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers.raw
        if name.lower() != b"transfer-encoding"
    ]


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", errors="replace")


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
