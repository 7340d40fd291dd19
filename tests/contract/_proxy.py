"""A tiny HTTP proxy on 127.0.0.1 for tests: forwards absolute-form requests (`POST
http://host:port/path HTTP/1.1`) and tunnels `CONNECT host:port`, recording the head of each
request it was asked to carry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit


class TinyProxy:
    """What the proxy was asked: each request head as received, and its first line."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def request_lines(self) -> list[str]:
        """The first line of each request head."""
        return [head.split(b"\r\n", 1)[0].decode() for head in self.heads]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry one client connection: its first request decides where it goes."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            request_line, _, rest = head.partition(b"\r\n")
            method, target, version = request_line.split(b" ")
            if method == b"CONNECT":
                host, _, port = target.decode().rpartition(":")
                upstream_reader, upstream = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target.decode())
                upstream_reader, upstream = await asyncio.open_connection(url.hostname, url.port)
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                upstream.write(b"%s %s %s\r\n%s" % (method, path.encode(), version, rest))
            await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """End every connection still carried."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@asynccontextmanager
async def running_proxy(userinfo: str = "") -> AsyncIterator[TinyProxy]:
    """A TinyProxy listening on 127.0.0.1; its `url` carries `userinfo` (`user:password`)."""
    proxy = TinyProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy.url = f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        server.close()
        await proxy.stop()
