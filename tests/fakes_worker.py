"""Fakes for the worker's tests: a scripted target, an inventory, a clock that moves when told,
and a waiting client that keeps what the worker feeds it (held to the `WaitingClient` contract
in `tests/contract/test_waiting_client.py`)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from foreman_core import TargetRejected
from foreman_core.ports import AbortReason

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DONE_LINE = b'{"model":"m","message":{"role":"assistant","content":""},"done":true}\n'
LOADED = b'{"model":"m","message":{"role":"assistant","content":""},"done_reason":"load"}'


# -- the target, inventory and clock ------------------------------------------------------


@dataclass
class Reply:
    """The target answers 2xx with `chunks`; it may wait before chunk `pause_before` until
    `resume` is set, and may fail with `then_raise` after the last chunk."""

    chunks: list[bytes] = field(default_factory=lambda: [DONE_LINE])
    status: int = 200
    content_type: str = NDJSON
    pause_before: int | None = None
    then_raise: Exception | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Refuse:
    """Entering the request raises `error` (no byte came back, or the target said no)."""

    error: Exception


Outcome = Reply | Refuse
OPEN = "open"


@dataclass
class Call:
    """One request the fake target received, and how its context was left."""

    kind: str
    body: bytes
    is_load: bool
    exited_with: type[BaseException] | str | None = OPEN


class FakeResponse:
    """A 2xx response of the fake target."""

    def __init__(self, reply: Reply) -> None:
        self.status = reply.status
        self.content_type = reply.content_type
        self._reply = reply

    async def chunks(self) -> AsyncIterator[bytes]:
        """The scripted chunks, with the scripted pause and failure."""
        for index, chunk in enumerate(self._reply.chunks):
            if index == self._reply.pause_before:
                self._reply.paused.set()
                await self._reply.resume.wait()
            yield chunk
        if self._reply.then_raise is not None:
            raise self._reply.then_raise


class FakeExchange:
    """The context manager `FakeTarget.open` returns: one request in flight while entered."""

    def __init__(self, target: FakeTarget, call: Call, outcome: Outcome) -> None:
        self._target, self._call, self._outcome = target, call, outcome

    async def __aenter__(self) -> FakeResponse:
        self._target.calls.append(self._call)
        self._target.in_flight += 1
        self._target.max_in_flight = max(self._target.max_in_flight, self._target.in_flight)
        if isinstance(self._outcome, Refuse):
            self._leave(None)
            raise self._outcome.error
        return FakeResponse(self._outcome)

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._leave(exc_type)

    def _leave(self, exc_type: type[BaseException] | None) -> None:
        self._target.in_flight -= 1
        self._call.exited_with = exc_type


class FakeTarget:
    """An InferenceTarget answering each request with the next scripted outcome.

    Load requests (chat with `messages: []`) have their own script; unscripted requests get a
    plain done line, unscripted loads a load answer.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._replies: deque[Outcome] = deque()
        self._loads: deque[Outcome] = deque()

    def script(self, *outcomes: Outcome) -> None:
        """Answer the next requests with `outcomes`, in order."""
        self._replies.extend(outcomes)

    def script_loads(self, *outcomes: Outcome) -> None:
        """Answer the next load requests with `outcomes`, in order."""
        self._loads.extend(outcomes)

    @property
    def requests(self) -> list[Call]:
        """The calls that were not load requests."""
        return [call for call in self.calls if not call.is_load]

    @property
    def loads(self) -> list[Call]:
        """The load requests."""
        return [call for call in self.calls if call.is_load]

    def open(self, kind: str, body: bytes) -> FakeExchange:
        """Start a request (see InferenceTarget.open)."""
        is_load = json.loads(body).get("messages") == []
        if is_load:
            outcome = self._loads.popleft() if self._loads else Reply([LOADED], content_type=JSON)
        else:
            outcome = self._replies.popleft() if self._replies else Reply()
        return FakeExchange(self, Call(kind, body, is_load), outcome)


class FakeInventory:
    """A ModelInventory whose loaded models the test sets; a refresh finds the inventory
    degraded while the test says the target is down."""

    def __init__(self, loaded: Sequence[str] = ()) -> None:
        self.loaded = list(loaded)
        self.degraded = False
        self.target_down = False
        self.refreshes = 0

    def resident(self) -> list[str]:
        """The models set as loaded."""
        return list(self.loaded)

    async def has_model(self, name: str) -> bool:
        """Every model is installed."""
        return True

    async def refresh(self) -> None:
        """Poll the fake target."""
        self.refreshes += 1
        self.degraded = self.target_down


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        """The current fake time."""
        return self.current

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.current += timedelta(seconds=seconds)


# -- the waiting client -------------------------------------------------------------------


@dataclass(frozen=True)
class Begun:
    """`begin`: the target answered 2xx."""

    status: int
    content_type: str


@dataclass(frozen=True)
class Ended:
    """`end`: the body is complete."""


@dataclass(frozen=True)
class Rejected:
    """`reject`: the target's refusal, to be relayed as it is."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Aborted:
    """`abort`: foreman's error, and why."""

    reason: AbortReason
    message: str


END = Ended()
Fed = Begun | bytes | Ended | Rejected | Aborted


class FakeClient:
    """A WaitingClient keeping what the worker feeds it, in order (chunks as bytes); a call
    the port's order does not allow is noted in `misfed`, which the rig checks at the end."""

    def __init__(self) -> None:
        self.fed: list[Fed] = []
        self.misfed: list[str] = []
        self._changed = asyncio.Event()

    @property
    def started(self) -> bool:
        """`begin` was called."""
        return bool(self.fed) and isinstance(self.fed[0], Begun)

    @property
    def finished(self) -> bool:
        """`end`, `reject` or `abort` was called."""
        return bool(self.fed) and isinstance(self.fed[-1], Ended | Rejected | Aborted)

    def begin(self, status: int, content_type: str) -> None:
        """Keep `Begun`; only as the first call."""
        self._feed(Begun(status, content_type), allowed=not self.fed)

    def send(self, chunk: bytes) -> None:
        """Keep the chunk; only after `begin`."""
        self._feed(chunk, allowed=self.started)

    def end(self) -> None:
        """Keep `END`; only after `begin`."""
        self._feed(END, allowed=self.started)

    def reject(self, rejection: TargetRejected) -> None:
        """Keep `Rejected`; only as the first call."""
        failed = Rejected(rejection.status, rejection.body, rejection.content_type)
        self._feed(failed, allowed=not self.fed)

    def abort(self, reason: AbortReason, message: str) -> None:
        """Keep `Aborted`."""
        self._feed(Aborted(reason, message), allowed=True)

    def _feed(self, item: Fed, *, allowed: bool) -> None:
        if self.finished or not allowed:
            self.misfed.append(f"{item!r} after {self.fed!r}")
        self.fed.append(item)
        self._changed.set()

    async def first(self) -> Fed:
        """The first thing the worker fed, once it has."""
        return (await self.upto(1))[0]

    async def upto(self, count: int) -> list[Fed]:
        """The first `count` things the worker fed, once it has."""
        await self._until(lambda: len(self.fed) >= count)
        return self.fed[:count]

    async def whole(self) -> list[Fed]:
        """Everything the worker fed, once the response has finished."""
        await self._until(lambda: self.finished)
        return list(self.fed)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()
