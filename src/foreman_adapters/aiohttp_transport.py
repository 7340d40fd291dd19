"""`AiohttpTransport`: httpx's client API over an aiohttp connection pool (ADR 0017).

The adapters speak httpx — `OllamaTarget` hands httpx `Request`s to a transport, the webhook
sender uses an `httpx.AsyncClient` — so tests give them `httpx.ASGITransport` over a fake; for
real traffic foreman gives them this transport. aiohttp keeps the connections, parses the
responses and handles TLS, proxies and name lookups; this module only translates: httpx's
request and timeouts in, httpx's response and exception classes out, so callers cannot tell it
from httpx's own transport. Also here: the TLS settings for an Ollama behind HTTPS, and the
proxy settings of the environment.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver

SKIPPED_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
"""Headers aiohttp would add on its own: a request goes with the headers its caller gave."""
Timeouts = tuple[float | None, float | None]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests on one lazily opened `aiohttp.ClientSession`: up to
    `max_connections` requests at once (more wait for a slot), idle connections kept
    `keepalive_expiry` seconds for reuse, host names looked up by `resolver` (aiohttp's
    threaded `getaddrinfo` when None), HTTPS checked with `tls` (httpx's default verification
    when None: certifi's CA bundle, or SSL_CERT_FILE), and a request sent through the proxy
    `proxies` names for its URL, if any.

    Honours httpx's connect timeout (opening the connection, TLS included) and read timeout
    (each wait for the response's head or its next data); an unset one is no limit, and there
    is no overall deadline. Redirects are never followed and bodies are passed on undecoded;
    the httpx client above decides both. Cookies are neither stored nor sent. A request body
    is sent whole, with its length. A chunked response body is handed over chunk by chunk as
    the server framed it (Ollama writes one NDJSON line per chunk); any other as it arrives.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        resolver: AbstractResolver | None = None,
        tls: ssl.SSLContext | None = None,
        proxies: EnvironmentProxies | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._resolver = resolver
        self._tls = tls
        self._proxies = proxies
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the response's body is left to stream."""
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        body = await request.aread()
        headers = _as_sent(request.headers)
        proxy = None if self._proxies is None else self._proxies.for_url(url)
        through = {} if proxy is None else proxy.options(url.scheme, headers)
        with _as_httpx_error(request, during_body=False):
            response = await self._open_session().request(
                request.method,
                str(url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request.extensions.get("timeout", {})),
                ssl=self._tls_context() if url.scheme == "https" else True,
                **through,
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
        # Made at the first request: aiohttp binds a session to the running event loop.
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
                skip_auto_headers=SKIPPED_AUTO_HEADERS,
            )
        return self._session

    def _tls_context(self) -> ssl.SSLContext:
        """The given context, or httpx's default verification, made at the first HTTPS call."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    def _timeout(self, timeouts: Mapping[str, Any]) -> aiohttp.ClientTimeout:
        key = (timeouts.get("connect"), timeouts.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1]
            )
        return found


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx streams it; closing it returns the connection to the
    pool when the body was received to its end, and closes it (aborting the request at the
    server) when it was not."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        chunked = "chunked" in self._response.headers.get("Transfer-Encoding", "").lower()
        with _as_httpx_error(self._request, during_body=True):
            if not chunked:
                async for data in content.iter_any():
                    yield data
                return
            # aiohttp hands over what has arrived, marking where a chunk ends: the pieces of
            # a chunk that came in several TCP segments are joined back into one.
            pieces: list[bytes] = []
            async for data, chunk_ends in content.iter_chunks():
                pieces.append(data)
                if chunk_ends:
                    whole = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    pieces.clear()
                    if whole:
                        yield whole
            if any(pieces):
                yield b"".join(pieces)

    async def aclose(self) -> None:
        self._response.release()


class Proxy:
    """An HTTP proxy: its URL, and the credentials a `user:password@` in it gives."""

    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self.url = str(parsed.copy_with(username=None, password=None))
        credentials = f"{parsed.username}:{parsed.password}".encode()
        self.authorization = (
            "Basic " + base64.b64encode(credentials).decode("ascii")
            if parsed.username or parsed.password
            else None
        )

    def options(self, scheme: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
        """aiohttp's options for a request through this proxy. A plain HTTP request goes to
        the proxy itself, so the credentials join its `headers`; an HTTPS one is tunnelled,
        and they go with the CONNECT that opens the tunnel."""
        if self.authorization is None:
            return {"proxy": self.url}
        if scheme == "http":
            headers.append(("Proxy-Authorization", self.authorization))
            return {"proxy": self.url}
        return {"proxy": self.url, "proxy_headers": {"Proxy-Authorization": self.authorization}}


class EnvironmentProxies:
    """HTTP_PROXY, HTTPS_PROXY and NO_PROXY (or their lower-case spellings), read once, as
    the standard library reads them (`urllib.request.getproxies_environment`)."""

    def __init__(self, proxies: Mapping[str, str]) -> None:
        self._proxies = dict(proxies)
        self._by_scheme = {
            scheme: Proxy(url)
            for scheme, url in self._proxies.items()
            if scheme in ("http", "https") and url
        }

    @classmethod
    def from_environment(cls) -> EnvironmentProxies:
        """The proxies this process's environment names."""
        return cls(urllib.request.getproxies_environment())

    def for_url(self, url: httpx.URL) -> Proxy | None:
        """The proxy a request to `url` goes through, or None to go directly."""
        proxy = self._by_scheme.get(url.scheme)
        if proxy is None or _bypassed(url.host, url.port, self._proxies.get("no", "")):
            return None
        return proxy


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY names `host`: `*`, the host itself, or a domain it lies in (curl's
    reading: `example.com` and `.example.com` both cover `api.example.com`), with an optional
    `:port` that must then match too."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        name, entry_port = _name_and_port(entry.strip().lower())
        if name == "*":
            return True
        if entry_port and entry_port != str(port):
            continue
        name = name.strip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _name_and_port(entry: str) -> tuple[str, str]:
    """A NO_PROXY entry's host and port (empty if none): `host:port`, `[v6]:port`, bare `v6`."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, rest.removeprefix(":")
    if entry.count(":") > 1:
        return entry, ""
    name, _, port = entry.partition(":")
    return name, port


def client_tls(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """Verification against `ca_file`'s certificates instead of the default trust store (when
    given), and `client_cert` (a PEM file; its unencrypted private key in `client_key`, or in
    the same file) shown to servers that ask for a client certificate. Raises OSError
    (ssl.SSLError among them) for a file that cannot be read or holds no usable certificate or
    key, ValueError for an encrypted key."""
    # Given a CA file, the default context loads nothing else (no system store, no
    # SSL_CERT_FILE): it takes their place.
    tls = (
        httpx.create_ssl_context()
        if ca_file is None
        else ssl.create_default_context(cafile=ca_file)
    )
    if client_cert is not None:
        tls.load_cert_chain(client_cert, client_key, password=_refuse_encrypted_key)
    return tls


def _refuse_encrypted_key() -> bytes:
    """Asked for only by an encrypted key; without it OpenSSL would prompt on the terminal."""
    raise ValueError("the private key is encrypted; foreman needs it unencrypted")


@contextmanager
def _as_httpx_error(request: httpx.Request, *, during_body: bool) -> Iterator[None]:
    """Re-raise aiohttp's failures as the httpx exceptions httpx's own transport would raise:
    connecting failed, timed out, the connection was lost (before the response's head a
    protocol error: nothing came back; inside its body a read error), or the answer was not
    HTTP."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(_message(exc), request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.ReadTimeout(_message(exc), request=request) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise httpx.ProxyError(_message(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(_message(exc), request=request) from exc
    except aiohttp.ClientHttpProxyError as exc:
        raise httpx.ProxyError(_message(exc), request=request) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        error = httpx.ReadError if during_body else httpx.RemoteProtocolError
        raise error(_message(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:  # a response aiohttp could not parse
        raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(_message(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(_message(exc), request=request) from exc


def _as_sent(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The headers with their names spelled as the caller spelled them (some receivers look
    names up case-sensitively), less a chunked Transfer-Encoding, since the body goes whole."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers.raw
        if name.lower() != b"transfer-encoding"
    ]


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", errors="replace")


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
