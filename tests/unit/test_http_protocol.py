"""`HeadHoldingTransport`: a response head leaves with the first body bytes, never later than the
end of the event loop's round, and before the connection closes."""

from __future__ import annotations

import asyncio

import pytest

from foreman_app.http_protocol import HeadHoldingTransport

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class FakeTransport:
    """Records each write as one system call would send it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


async def test_a_head_and_the_body_written_in_one_round_leave_in_one_write() -> None:
    fake = FakeTransport()
    transport = HeadHoldingTransport(fake)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.write(b"{}")
    assert fake.writes == [HEAD + b"{}"]
    await _next_round()
    assert fake.writes == [HEAD + b"{}"]  # nothing left to flush


async def test_a_head_alone_leaves_when_the_loops_round_ends() -> None:
    fake = FakeTransport()
    transport = HeadHoldingTransport(fake)  # type: ignore[arg-type]
    transport.write(HEAD)
    assert fake.writes == []
    await _next_round()
    assert fake.writes == [HEAD]
    transport.write(b'{"a":1}\n')
    assert fake.writes == [HEAD, b'{"a":1}\n']


async def test_body_bytes_and_other_writes_are_never_held() -> None:
    fake = FakeTransport()
    transport = HeadHoldingTransport(fake)  # type: ignore[arg-type]
    for data in (b"5\r\nhello\r\n", b"HTTP/1.1 is text a body may hold", b"0\r\n\r\n"):
        transport.write(data)
    assert fake.writes == [b"5\r\nhello\r\n", b"HTTP/1.1 is text a body may hold", b"0\r\n\r\n"]


async def test_closing_sends_a_held_head_first() -> None:
    fake = FakeTransport()
    transport = HeadHoldingTransport(fake)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.close()
    assert fake.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert fake.closed
    await _next_round()  # the scheduled flush finds nothing to send and writes nothing
    assert len(fake.writes) == 1


async def test_a_head_held_when_the_connection_drops_is_not_written() -> None:
    fake = FakeTransport()
    transport = HeadHoldingTransport(fake)  # type: ignore[arg-type]
    transport.write(HEAD)
    fake.closed = True  # the client went away
    await _next_round()
    assert fake.writes == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    transport = HeadHoldingTransport(FakeTransport())  # type: ignore[arg-type]
    assert transport.get_extra_info("peername") == "info peername"
    assert not transport.is_closing()


async def _next_round() -> None:
    """Let the event loop run what was scheduled for its next round."""
    await asyncio.sleep(0)
