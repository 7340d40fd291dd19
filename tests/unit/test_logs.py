"""DeferredStreamHandler: lines logged on the event loop are written a moment later, in order."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest

from foreman_app.logs import DeferredStreamHandler

pytestmark = pytest.mark.anyio


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, DeferredStreamHandler]]:
    """A logger of its own writing through the handler into a string."""
    stream = io.StringIO()
    handler = DeferredStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.deferred")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_off_the_event_loop_a_line_is_written_at_once(
    logged: tuple[logging.Logger, io.StringIO, DeferredStreamHandler],
) -> None:
    logger, stream, _ = logged
    logger.info("one")
    assert stream.getvalue() == "INFO one\n"


async def test_on_the_event_loop_lines_wait_and_then_come_in_order(
    logged: tuple[logging.Logger, io.StringIO, DeferredStreamHandler],
) -> None:
    logger, stream, _ = logged
    logger.info("one")
    logger.warning("two %d", 2)
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # not in the step that logged them, nor the next
    for _ in range(5000):
        if stream.getvalue():
            break
        await asyncio.sleep(0.001)
    assert stream.getvalue() == "INFO one\nWARNING two 2\n"


async def test_flush_writes_what_is_kept_at_once(
    logged: tuple[logging.Logger, io.StringIO, DeferredStreamHandler],
) -> None:
    logger, stream, handler = logged
    logger.info("kept")
    handler.flush()  # what logging.shutdown does at exit
    assert stream.getvalue() == "INFO kept\n"
    handler.flush()
    assert stream.getvalue() == "INFO kept\n"
