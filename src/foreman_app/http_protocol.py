"""`HeadsWithBodies`: uvicorn's HTTP protocol, each response head sent with its first body bytes.

uvicorn writes a response's head to the socket the moment the app starts the response, and its
body with each later message: two system calls and two segments for an answer whose body is
ready at once. On a virtual machine each write to a socket costs 50-100 us of a cold CPU, and
the client reads nothing useful from a head alone (ADR 0016). This protocol holds a head back
until the next write, which it joins, or until the event loop's current round of work ends,
whichever comes first: a stream's head still goes out as soon as the app has nothing more to
send at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadsWithBodies(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport that holds each response head back."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport))  # type: ignore[arg-type]


class HeadHoldingTransport:
    """A transport whose `write` of a bare HTTP response head (its status line through the blank
    line, nothing after) is held and sent with the next write, or at the end of the loop's
    current round, or before the transport closes. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n"):
            self._head = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send a head still held."""
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
