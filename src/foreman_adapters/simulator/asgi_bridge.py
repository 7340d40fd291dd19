"""An ASGI app served by aiohttp's web server, with its TCP connection within the app's reach.

ASGI gives an app no way to drop its connection, but a dying Ollama does, so the simulator is
not served by an ASGI server: one aiohttp handler (public `aiohttp.web` API) carries each request
to the app as ASGI messages and hands the app two scope extensions, `RESET_EXTENSION` (RST, as a
crashed peer sends) and `CLOSE_EXTENSION` (FIN after what was sent), over `request.transport`.

Responses keep the app's framing: a Content-Length when the app sets one, chunked otherwise,
each body message written as it comes. aiohttp's `Server` header is removed (Ollama sends none);
its `Date` stays (Ollama sends one too).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web

from foreman_adapters.simulator.wire import (
    CLOSE_EXTENSION,
    RESET_EXTENSION,
    Message,
    Receive,
    Scope,
    Send,
)

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_application(app: AsgiApp) -> web.Application:
    """An aiohttp application that hands every request, whatever its method and path, to `app`.

    Run it with `handler_cancellation=True` (as `serve_simulator` does): the cancelled handler
    is how a client that leaves becomes the app's `http.disconnect`.
    """
    bridge = _Bridge(app)
    application = web.Application()
    application.router.add_route("*", "/{path:.*}", bridge.handle)
    application.on_response_prepare.append(_drop_server_header)
    application.on_cleanup.append(bridge.cancel_leftovers)
    return application


async def _drop_server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def reset(transport: asyncio.BaseTransport) -> None:
    """Reset the connection (RST), as the kernel of a crashed server does."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger 0: closing sends RST instead of FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _Bridge:
    """Runs the app once per request; keeps the runs a departed client left behind."""

    def __init__(self, app: AsgiApp) -> None:
        self._app = app
        self._runs: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Run the app for `request` until it has finished, or until the client has gone."""
        transport = request.transport
        if transport is None:  # the client left before its request got here: nobody to answer
            return web.Response(status=500)
        exchange = _Exchange(request)
        scope = _scope(request, transport)
        # The app runs in a task of its own so that a client leaving ends the handler (aiohttp
        # cancels it) but not the app, which hears `http.disconnect` and winds down itself.
        run = asyncio.ensure_future(self._app(scope, exchange.receive, exchange.send))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        try:
            await asyncio.wait({run})
        except asyncio.CancelledError:
            exchange.finish()
            raise
        run.result()
        if exchange.response is None or not exchange.response.prepared:
            return web.Response(status=500, text="Internal Server Error")
        return exchange.response

    async def cancel_leftovers(self, _application: web.Application) -> None:
        """Cancel the runs still going when the server stops."""
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)


def _scope(request: web.Request, transport: asyncio.BaseTransport) -> Scope:
    url = request.rel_url
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": url.path,
        "raw_path": url.raw_path.encode(),
        "query_string": url.raw_query_string.encode(),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": _address(transport.get_extra_info("peername")),
        "server": _address(transport.get_extra_info("sockname")),
        "extensions": {
            RESET_EXTENSION: lambda: reset(transport),
            CLOSE_EXTENSION: transport.close,
        },
    }


def _address(info: object) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


class _Exchange:
    """One request's ASGI `receive` and `send`, over aiohttp's request and a StreamResponse."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self._body_read = False
        self._finished = asyncio.Event()  # the client has gone or the response is complete

    def finish(self) -> None:
        """Nothing more goes to the client: `receive` says `http.disconnect`, `send` drops."""
        self._finished.set()

    async def receive(self) -> Message:
        """The request body in chunks as they arrive, then `http.disconnect` once finished."""
        if not self._body_read:
            try:
                chunk = await self.request.content.readany()
            except OSError:  # the client left mid-body
                self.finish()
            else:
                more = not self.request.content.at_eof()
                self._body_read = not more
                return {"type": "http.request", "body": chunk, "more_body": more}
        await self._finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Start the response, or write a piece of its body (the head goes with the first)."""
        if self._finished.is_set():
            return
        if message["type"] == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", ()):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            self.response = response
            return
        if message["type"] != "http.response.body" or self.response is None:
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        body = message.get("body", b"")
        try:
            await self.response.prepare(self.request)
            if message.get("more_body", False):
                if body:
                    await self.response.write(body)
                return
            await self.response.write_eof(body)
        except OSError:  # the client has gone; what the app still sends goes nowhere
            pass
        self.finish()
