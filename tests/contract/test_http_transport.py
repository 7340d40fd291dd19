"""AiohttpTransport against raw asyncio servers on 127.0.0.1 that write exact bytes, so the tests
control TCP framing: how responses are read (each HTTP chunk one piece, bodies without one),
how requests are written, timeouts, the httpx exceptions failures become, the keep-alive pool and
its limit (also with more than 1,024 sockets open), the resolver hook, TLS verification and client
certificates, large bodies, and use under an httpx client."""

from __future__ import annotations

import asyncio
import errno
import random
import re
import resource
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
from _tls import Pki, make_pki
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives import serialization

from foreman_adapters.aiohttp_transport import AiohttpTransport, client_tls

pytestmark = pytest.mark.anyio

TLS = Path(__file__).parent / "tls"
LIMIT = 10.0
"""Seconds any one step may take before the test fails rather than hangs."""
TIMEOUT: dict[str, float | None] = {"connect": 5.0, "read": None, "write": None, "pool": None}

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
Step = bytes | asyncio.Event | Script
Reply = bytes | Script


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sized(body: bytes, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    """A response with a Content-Length; `headers` are whole lines, each ending in CRLF."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


def steps(*items: Step) -> Script:
    """A reply in steps: bytes are written (each its own write), an event is waited for, and a
    script (`hang_up`, `reset`) is run."""

    async def script(writer: asyncio.StreamWriter) -> None:
        for item in items:
            if isinstance(item, bytes):
                writer.write(item)
                await writer.drain()
            elif isinstance(item, asyncio.Event):
                await item.wait()
            else:
                await item(writer)

    return script


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def reset(writer: asyncio.StreamWriter) -> None:
    linger = struct.pack("ii", 1, 0)  # closing with a zero linger sends RST, not FIN
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    writer.transport.abort()
    await writer.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's raw bytes (its body by Content-Length), or b"" at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return head + await reader.readexactly(int(length[1]) if length else 0)
    except asyncio.IncompleteReadError:
        return b""


def split_request(raw: bytes) -> tuple[list[bytes], dict[bytes, bytes], bytes]:
    """Head lines as sent, header fields by lower-cased name, and the body."""
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    fields = {
        name.lower(): value.strip() for name, _, value in (x.partition(b":") for x in lines[1:])
    }
    return lines, fields, body


@dataclass
class Connection:
    """One TCP connection the server accepted."""

    requests: list[bytes] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_server: asyncio.Event = field(default_factory=asyncio.Event)


class RawServer:
    """Answers each request, on whatever connection, with the next reply; once they run out it
    reads on without answering. Records connections, requests and which the client closed."""

    def __init__(self, replies: tuple[Reply, ...]) -> None:
        self.replies = list(replies)
        self.connections: list[Connection] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def requests(self) -> list[bytes]:
        return [raw for connection in self.connections for raw in connection.requests]

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = Connection()
        self.connections.append(connection)
        try:
            while raw := await read_request(reader):
                connection.requests.append(raw)
                self.arrived.set()
                if self.replies:
                    reply = self.replies.pop(0)
                    await (steps(reply) if isinstance(reply, bytes) else reply)(writer)
                if writer.is_closing():  # the reply hung up
                    connection.closed_by_server.set()
                    return
            connection.closed_by_client.set()
        except OSError:
            connection.closed_by_client.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Serve = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts raw servers: `await serve(*replies, host=..., port=..., tls=...)`."""
    running: list[tuple[RawServer, asyncio.Server]] = []

    async def start(
        *replies: Reply, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> RawServer:
        server = RawServer(replies)
        listener = await asyncio.start_server(server.serve, host, port, ssl=tls)
        server.port = listener.sockets[0].getsockname()[1]
        running.append((server, listener))
        return server

    yield start
    for server, listener in running:
        listener.close()
        await server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport() as transport:
        yield transport


def request(
    method: str,
    url: str,
    content: bytes | AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    **timeout: float | None,
) -> httpx.Request:
    extensions = {"timeout": {**TIMEOUT, **timeout}}
    return httpx.Request(method, url, content=content, headers=headers, extensions=extensions)


async def send(transport: httpx.AsyncBaseTransport, sent: httpx.Request) -> httpx.Response:
    with anyio.fail_after(LIMIT):
        return await transport.handle_async_request(sent)


async def pieces(response: httpx.Response) -> list[bytes]:
    """The body as the transport yields it; the response is closed afterwards."""
    with anyio.fail_after(LIMIT):
        try:
            return [piece async for piece in response.aiter_raw()]
        finally:
            await response.aclose()


async def body_of(transport: httpx.AsyncBaseTransport, url: str) -> bytes:
    return b"".join(await pieces(await send(transport, request("GET", url))))


async def until(event: asyncio.Event) -> None:
    with anyio.fail_after(LIMIT):
        await event.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def tls_context(server_names: list[str | None]) -> ssl.SSLContext:
    """The self-signed certificate for localhost; the server names clients ask for are kept."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS / "localhost.crt", TLS / "localhost.key")
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    return context


# -- reading responses ------------------------------------------------------------------------


async def test_the_response_has_the_status_reason_and_header_names_the_server_sent(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(
        b"HTTP/1.1 299 Very Custom\r\nX-Mixed-Case: one\r\nset-cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
    )
    response = await send(transport, request("GET", server.url()))
    assert response.status_code == 299
    assert response.extensions["reason_phrase"] == b"Very Custom"
    assert response.reason_phrase == "Very Custom"
    assert response.headers.raw == [
        (b"X-Mixed-Case", b"one"),
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"2"),
    ]
    assert await pieces(response) == [b"ok"]


@pytest.mark.parametrize(
    "encoded",
    [
        chunk(b"hello") + chunk(b"world!") + LAST_CHUNK,
        b"5;name=value\r\nhello\r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n",
    ],
    ids=["plain", "with_extension_and_trailer"],
)
async def test_two_chunks_in_one_tcp_write_are_two_pieces(
    serve: Serve, transport: AiohttpTransport, encoded: bytes
) -> None:
    server = await serve(CHUNKED + encoded)
    response = await send(transport, request("GET", server.url()))
    assert await pieces(response) == [b"hello", b"world!"]


@pytest.mark.parametrize("split", [1, 8, 15], ids=["in_size_line", "in_data", "in_crlf"])
async def test_a_chunk_split_across_two_tcp_writes_is_one_piece(
    serve: Serve, transport: AiohttpTransport, split: int
) -> None:
    encoded = chunk(b"hello world") + LAST_CHUNK  # b"b\r\nhello world\r\n0\r\n\r\n"
    head_seen = asyncio.Event()
    server = await serve(steps(CHUNKED + encoded[:split], head_seen, encoded[split:]))
    response = await send(transport, request("GET", server.url()))
    head_seen.set()  # the first write reached the transport: the head came in it
    assert await pieces(response) == [b"hello world"]


async def test_chunks_longer_than_a_tcp_segment_are_still_one_piece_each(
    serve: Serve, transport: AiohttpTransport
) -> None:
    data = [random.Random(size).randbytes(size) for size in (1 << 20, 3, 200_000)]
    server = await serve(CHUNKED + b"".join(chunk(d) for d in data) + LAST_CHUNK)
    response = await send(transport, request("GET", server.url()))
    assert await pieces(response) == data


async def test_each_chunk_is_handed_over_before_the_next_is_sent(
    serve: Serve, transport: AiohttpTransport
) -> None:
    first_taken = asyncio.Event()
    server = await serve(steps(CHUNKED + chunk(b"first"), first_taken, chunk(b"next") + LAST_CHUNK))
    response = await send(transport, request("GET", server.url()))
    body = response.aiter_raw()
    with anyio.fail_after(LIMIT):
        assert await anext(body) == b"first"
    first_taken.set()
    with anyio.fail_after(LIMIT):
        assert [piece async for piece in body] == [b"next"]


@pytest.mark.parametrize(
    ("head", "ending"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\n\r\n", hang_up),
    ],
    ids=["content_length", "until_close"],
)
async def test_a_body_without_chunks_arrives_whole_across_writes(
    serve: Serve, transport: AiohttpTransport, head: bytes, ending: Step
) -> None:
    head_seen = asyncio.Event()
    server = await serve(steps(head + b"hello", head_seen, b" world", ending))
    response = await send(transport, request("GET", server.url()))
    head_seen.set()
    assert b"".join(await pieces(response)) == b"hello world"


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: "x"\r\n\r\n'),
    ],
    ids=["head", "204", "304"],
)
async def test_head_204_and_304_responses_have_no_body_and_keep_the_connection(
    serve: Serve, transport: AiohttpTransport, method: str, reply: bytes
) -> None:
    server = await serve(reply, sized(b"next"))
    response = await send(transport, request(method, server.url()))
    assert await pieces(response) == []
    assert await body_of(transport, server.url()) == b"next"
    assert len(server.connections) == 1


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"],
    ids=["100", "103"],
)
async def test_an_interim_1xx_response_is_skipped_for_the_final_one(
    serve: Serve, transport: AiohttpTransport, interim: bytes
) -> None:
    server = await serve(interim + sized(b"final", status=b"201 Created"))
    response = await send(transport, request("POST", server.url(), content=b"x"))
    assert (response.status_code, response.reason_phrase) == (201, "Created")
    assert "link" not in response.headers
    assert await pieces(response) == [b"final"]


# -- writing requests -------------------------------------------------------------------------


async def test_request_header_names_keep_the_callers_case_and_a_body_has_its_length(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(sized(b""))
    headers = {"X-Mixed-Case": "v", "authorization": "Bearer t"}
    sent = request("POST", server.url("/api/chat?x=1"), content=b"hello body", headers=headers)
    await pieces(await send(transport, sent))
    lines, fields, body = split_request(server.requests[0])
    assert lines[0] == b"POST /api/chat?x=1 HTTP/1.1"
    assert b"X-Mixed-Case: v" in lines
    assert b"authorization: Bearer t" in lines
    assert fields[b"host"] == b"127.0.0.1:%d" % server.port
    assert (fields[b"content-length"], body) == (b"10", b"hello body")


async def test_a_streamed_request_body_is_sent_whole_with_a_length_instead_of_chunked(
    serve: Serve, transport: AiohttpTransport
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    server = await serve(sized(b""))
    sent = request("POST", server.url(), content=parts())
    assert sent.headers["Transfer-Encoding"] == "chunked"
    await pieces(await send(transport, sent))
    _, fields, body = split_request(server.requests[0])
    assert b"transfer-encoding" not in fields
    assert (fields[b"content-length"], body) == (b"18", b"part one, part two")


# -- timeouts and failures --------------------------------------------------------------------


@pytest.fixture
def full_listener() -> Iterator[int]:
    """The port of a listening socket whose accept queue is full and never drained: the kernel
    drops further connection attempts, so connecting to it never finishes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):  # the queue holds backlog + 1; a few more leave no doubt
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                if filler.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                    break
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_a_connect_that_does_not_finish_in_time_is_a_connect_timeout(
    transport: AiohttpTransport, full_listener: int
) -> None:
    sent = request("GET", f"http://127.0.0.1:{full_listener}/", connect=0.2)
    with pytest.raises(httpx.ConnectTimeout):
        await send(transport, sent)


async def test_a_head_that_does_not_come_in_time_is_a_read_timeout(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve()  # reads the request, never answers
    with pytest.raises(httpx.ReadTimeout):
        await send(transport, request("GET", server.url(), read=0.05))


async def test_body_data_that_does_not_come_in_time_is_a_read_timeout(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(CHUNKED + chunk(b"first"))
    response = await send(transport, request("GET", server.url(), read=0.05))
    body = response.aiter_raw()
    with anyio.fail_after(LIMIT):
        assert await anext(body) == b"first"
        with pytest.raises(httpx.ReadTimeout):
            await anext(body)
    await response.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"], ids=["refused", "unknown"])
async def test_a_refused_connection_or_unknown_host_is_a_connect_error(
    transport: AiohttpTransport, host: str
) -> None:
    with pytest.raises(httpx.ConnectError):
        await send(transport, request("GET", f"http://{host}:{free_port()}/"))


@pytest.mark.parametrize(
    ("written", "ending"),
    [
        (b"", hang_up),
        (b"HTTP/1.1 200 OK\r\nContent-Le", hang_up),
        (b"", reset),
        (b"HTTP/1.1 200 OK\r\n", reset),
    ],
    ids=["closed_silently", "closed_inside_head", "reset_silently", "reset_inside_head"],
)
async def test_a_connection_lost_before_the_whole_head_is_a_remote_protocol_error(
    serve: Serve, transport: AiohttpTransport, written: bytes, ending: Script
) -> None:
    server = await serve(steps(written, ending))
    with pytest.raises(httpx.RemoteProtocolError):
        await send(transport, request("POST", server.url("/api/chat"), content=b"{}"))
    assert len(server.requests) == 1  # a POST is never sent twice


async def test_a_get_whose_connection_is_lost_before_any_answer_is_sent_once_more(
    serve: Serve, transport: AiohttpTransport
) -> None:
    # aiohttp retries an idempotent request once on a new connection (RFC 9112 §9.3.1.1): the
    # usual cause is a pooled connection the server closed as the request went out.
    server = await serve(steps(b"", hang_up), sized(b"second try"))
    assert await body_of(transport, server.url()) == b"second try"
    assert [len(connection.requests) for connection in server.connections] == [1, 1]


@pytest.mark.parametrize(
    ("first", "rest", "ending"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"", hang_up),
        (CHUNKED + chunk(b"hello"), b"5\r\nwor", hang_up),
        (CHUNKED + chunk(b"hello"), b"", hang_up),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"", reset),
    ],
    ids=["short_content_length", "inside_a_chunk", "before_last_chunk", "reset"],
)
async def test_a_connection_lost_inside_the_body_is_a_read_error_from_the_body(
    serve: Serve, transport: AiohttpTransport, first: bytes, rest: bytes, ending: Script
) -> None:
    head_seen = asyncio.Event()
    server = await serve(steps(first, head_seen, rest, ending))
    response = await send(transport, request("GET", server.url()))
    assert response.status_code == 200
    head_seen.set()
    with pytest.raises(httpx.ReadError):
        await pieces(response)


async def test_an_answer_that_is_not_http_is_a_remote_protocol_error(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
    with pytest.raises(httpx.RemoteProtocolError):
        await send(transport, request("GET", server.url()))


async def test_a_scheme_other_than_http_or_https_is_unsupported(
    transport: AiohttpTransport,
) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await send(transport, request("GET", f"ftp://127.0.0.1:{free_port()}/"))


# -- the connection pool ----------------------------------------------------------------------


@pytest.mark.parametrize("read_one", [False, True], ids=["unread", "after_one_piece"])
async def test_closing_a_response_before_its_body_ends_closes_its_connection(
    serve: Serve, transport: AiohttpTransport, read_one: bool
) -> None:
    server = await serve(CHUNKED + chunk(b"first token"), sized(b"again"))
    response = await send(transport, request("POST", server.url("/api/chat"), content=b"{}"))
    if read_one:
        with anyio.fail_after(LIMIT):
            assert await anext(response.aiter_raw()) == b"first token"
    await response.aclose()
    await until(server.connections[0].closed_by_client)
    assert await body_of(transport, server.url()) == b"again"
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    "first",
    [sized(b"one"), CHUNKED + chunk(b"o") + chunk(b"ne") + LAST_CHUNK],
    ids=["content_length", "chunked"],
)
async def test_a_response_read_to_its_end_gives_its_connection_to_the_next_request(
    serve: Serve, transport: AiohttpTransport, first: bytes
) -> None:
    server = await serve(first, sized(b"two"))
    assert await body_of(transport, server.url()) == b"one"
    assert await body_of(transport, server.url()) == b"two"
    assert [len(connection.requests) for connection in server.connections] == [2]


async def test_a_response_closed_unread_leaves_nothing_for_the_next_on_its_connection(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(sized(b"one"), sized(b"two"))
    unread = await send(transport, request("GET", server.url()))
    await unread.aclose()  # its body came with its head, whole, and was never read
    assert await body_of(transport, server.url()) == b"two"
    assert [len(connection.requests) for connection in server.connections] == [2]


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(steps(sized(b"one"), hang_up), sized(b"two"))
    assert await body_of(transport, server.url()) == b"one"
    await until(server.connections[0].closed_by_server)  # its FIN is in the client's socket
    assert await body_of(transport, server.url()) == b"two"
    assert [len(connection.requests) for connection in server.connections] == [1, 1]


async def test_a_response_saying_connection_close_does_not_keep_its_connection(
    serve: Serve, transport: AiohttpTransport
) -> None:
    server = await serve(sized(b"one", headers=b"Connection: close\r\n"), sized(b"two"))
    assert await body_of(transport, server.url()) == b"one"
    await until(server.connections[0].closed_by_client)
    assert await body_of(transport, server.url()) == b"two"
    assert len(server.connections) == 2


async def test_a_connection_whose_body_is_still_streaming_is_not_lent_to_another_request(
    serve: Serve, transport: AiohttpTransport
) -> None:
    finish = asyncio.Event()
    server = await serve(steps(CHUNKED + chunk(b"slow"), finish, LAST_CHUNK), sized(b"quick"))
    slow = await send(transport, request("GET", server.url("/slow")))
    assert await body_of(transport, server.url("/quick")) == b"quick"
    finish.set()
    assert await pieces(slow) == [b"slow"]
    assert len(server.connections) == 2


async def test_with_one_connection_allowed_a_second_request_waits_for_the_first_to_close(
    serve: Serve,
) -> None:
    server = await serve(CHUNKED + chunk(b"first"), sized(b"second"))
    async with AiohttpTransport(max_connections=1) as transport:
        first = await send(transport, request("GET", server.url("/1")))
        second: list[httpx.Response] = []

        async def second_request() -> None:
            second.append(await send(transport, request("GET", server.url("/2"))))

        async with anyio.create_task_group() as group:
            server.arrived.clear()
            group.start_soon(second_request)
            with anyio.move_on_after(0.05):  # a deadline for something that must not happen
                await server.arrived.wait()
            assert len(server.requests) == 1
            await first.aclose()
            await until(server.arrived)
        assert await pieces(second[0]) == [b"second"]


async def test_aclose_closes_idle_connections(serve: Serve) -> None:
    server = await serve(sized(b"one"))
    transport = AiohttpTransport()
    assert await body_of(transport, server.url()) == b"one"
    assert not server.connections[0].closed_by_client.is_set()
    await transport.aclose()
    await until(server.connections[0].closed_by_client)


# -- resolving and TLS ------------------------------------------------------------------------


class ListedResolver(AbstractResolver):
    """Answers every lookup with the same addresses (or raises `failure`); records what was
    asked."""

    def __init__(self, addresses: list[str], failure: OSError | None = None) -> None:
        self.addresses = addresses
        self.failure = failure
        self.asked: list[tuple[str, int]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append((host, port))
        if self.failure is not None:
            raise self.failure
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_gives_the_addresses_tried_in_order_and_the_first_that_connects_wins(
    serve: Serve,
) -> None:
    one = await serve(sized(b"from 127.0.0.1"))
    two = await serve(sized(b"from 127.0.0.2"), host="127.0.0.2", port=one.port)
    resolver = ListedResolver(["127.0.0.3", "127.0.0.2", "127.0.0.1"])  # none on 127.0.0.3

    async with AiohttpTransport(resolver=resolver) as transport:
        assert await body_of(transport, f"http://upstream.invalid:{one.port}/") == b"from 127.0.0.2"
    assert resolver.asked == [("upstream.invalid", one.port)]
    assert split_request(two.requests[0])[1][b"host"] == b"upstream.invalid:%d" % one.port
    assert one.connections == []


async def test_a_resolver_that_fails_is_a_connect_error(serve: Serve) -> None:
    # A resolver that finds nothing raises (aiohttp's contract), as AllowedAddressResolver does.
    server = await serve(sized(b"must not be reached"))
    resolver = ListedResolver([], OSError("no such host"))
    async with AiohttpTransport(resolver=resolver) as transport:
        with pytest.raises(httpx.ConnectError):
            await send(transport, request("GET", f"http://localhost:{server.port}/"))
    assert server.connections == []


async def test_https_trusts_ssl_cert_file_and_names_the_url_host_to_the_server(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "localhost.crt"))
    server_names: list[str | None] = []
    server = await serve(sized(b"secret"), tls=tls_context(server_names))

    async with AiohttpTransport(resolver=ListedResolver(["127.0.0.1"])) as transport:
        assert await body_of(transport, f"https://localhost:{server.port}/") == b"secret"
    assert server_names == ["localhost"]


async def test_https_to_an_untrusted_certificate_is_a_connect_error(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server = await serve(sized(b"secret"), tls=tls_context([]))
    async with AiohttpTransport() as transport:
        with pytest.raises(httpx.ConnectError):
            await send(transport, request("GET", server.url(scheme="https")))
    assert server.requests == []


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.mark.parametrize("key_apart", [True, False], ids=["key_file", "key_in_cert_file"])
async def test_client_tls_trusts_the_ca_file_and_shows_the_client_certificate(
    serve: Serve, pki: Pki, key_apart: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = await serve(sized(b"mutual"), tls=pki.server)
    tls = (
        client_tls(pki.ca_file, pki.client_cert, pki.client_key)
        if key_apart
        else client_tls(pki.ca_file, pki.client_cert_and_key)
    )
    async with AiohttpTransport(tls=tls) as transport:
        assert await body_of(transport, server.url(scheme="https")) == b"mutual"


async def test_without_a_client_certificate_a_server_that_requires_one_is_not_reached(
    serve: Serve, pki: Pki
) -> None:
    server = await serve(sized(b"mutual"), tls=pki.server)
    async with AiohttpTransport(tls=client_tls(pki.ca_file)) as transport:
        with pytest.raises(httpx.TransportError):
            await pieces(await send(transport, request("GET", server.url(scheme="https"))))
    assert server.requests == []


async def test_the_ca_file_takes_the_place_of_the_default_trust(
    serve: Serve, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's certificate is trusted by SSL_CERT_FILE, not by the CA file given.
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "localhost.crt"))
    server = await serve(sized(b"secret"), tls=tls_context([]))
    async with AiohttpTransport(tls=client_tls(pki.ca_file)) as transport:
        with pytest.raises(httpx.ConnectError):
            await send(transport, request("GET", server.url(scheme="https")))


def test_client_tls_refuses_files_without_certificates_or_with_an_encrypted_key(
    pki: Pki, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(ssl.SSLError):
        client_tls(ca_file=str(empty))
    with pytest.raises(FileNotFoundError):
        client_tls(ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ssl.SSLError):
        client_tls(client_cert=pki.client_cert)  # no key in it, none given
    encrypted = tmp_path / "encrypted.pem"
    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        client_tls(client_cert=pki.client_cert, client_key=str(encrypted))


# -- many sockets -----------------------------------------------------------------------------

SOCKETS_HELD = 1100


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """More than 1,024 sockets open in this process (select() cannot watch a descriptor past
    1,023), with the soft limit on open files raised for them when it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SOCKETS_HELD + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit on open files is {hard}; this test needs {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [socket.socket() for _ in range(SOCKETS_HELD)]
    try:
        with socket.socket() as probe:  # the lowest free descriptor: what the next socket gets
            assert probe.fileno() >= 1024
        yield
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_with_more_than_1024_sockets_open_a_pooled_connection_is_reused(
    serve: Serve, transport: AiohttpTransport, many_sockets: None
) -> None:
    server = await serve(sized(b"one"), sized(b"two"))
    assert await body_of(transport, server.url()) == b"one"
    assert await body_of(transport, server.url()) == b"two"
    assert [len(connection.requests) for connection in server.connections] == [2]


# -- large bodies and use under a client ------------------------------------------------------


async def test_a_5_mib_response_body_arrives_whole(
    serve: Serve, transport: AiohttpTransport
) -> None:
    data = random.Random(5).randbytes(5 << 20)
    server = await serve(sized(data))
    assert await body_of(transport, server.url()) == data


async def test_an_8_mib_request_body_arrives_whole(
    serve: Serve, transport: AiohttpTransport
) -> None:
    data = random.Random(8).randbytes(8 << 20)
    server = await serve(sized(b"got it"))
    response = await send(transport, request("POST", server.url(), content=data))
    assert await pieces(response) == [b"got it"]
    _, fields, body = split_request(server.requests[0])
    assert fields[b"content-length"] == b"%d" % len(data)
    assert body == data


async def test_an_httpx_client_streams_posts_and_times_out_through_the_transport(
    serve: Serve,
) -> None:
    server = await serve(
        CHUNKED + chunk(b'{"a":') + chunk(b"1}") + LAST_CHUNK,
        sized(b'{"ok":true}', headers=b"Content-Type: application/json\r\n"),
    )
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=5.0) as client:
        with anyio.fail_after(LIMIT):
            async with client.stream("POST", server.url("/s"), json={"q": 1}) as response:
                assert [piece async for piece in response.aiter_raw()] == [b'{"a":', b"1}"]
            assert (await client.post(server.url("/p"), content=b"x")).json() == {"ok": True}
            with pytest.raises(httpx.ReadTimeout):  # the server has no third answer
                await client.get(server.url("/t"), timeout=httpx.Timeout(5.0, read=0.05))
    assert [len(connection.requests) for connection in server.connections] == [3]
    assert split_request(server.requests[0])[2] == b'{"q":1}'
