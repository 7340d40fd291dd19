"""Running the simulator on a real socket (uvicorn), in-process or as `python -m`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from foreman_adapters.simulator.app import SimulatedOllama
from foreman_adapters.simulator.wire import (
    CLOSE_EXTENSION,
    RESET_EXTENSION,
    Receive,
    Scope,
    Send,
)


class _ResettableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, handing the app ways to reset or close its TCP connection.

    An ASGI app cannot drop a connection (uvicorn would answer 500 or finish the response),
    but a dying Ollama does; the simulator needs it to stand for resets and crashes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app_with_reset(scope: Scope, receive: Receive, send: Send) -> None:
            scope["extensions"] = {
                **(scope.get("extensions") or {}),
                RESET_EXTENSION: self._reset,
                CLOSE_EXTENSION: self.transport.close,
            }
            await inner(scope, receive, send)

        self.app = app_with_reset

    def _reset(self) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # linger 0: close() sends RST instead of FIN, as a crashed peer does
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator listening on a socket."""

    url: str
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]


def simulator_config(
    sim: SimulatedOllama, host: str = "127.0.0.1", port: int = 0
) -> uvicorn.Config:
    """The uvicorn configuration that serves `sim` faithfully (no Server header, resettable)."""
    return uvicorn.Config(
        sim,
        host=host,
        port=port,
        http=_ResettableH11Protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=1,
        log_config=None,
    )


@contextlib.asynccontextmanager
async def serve_simulator(
    sim: SimulatedOllama, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve `sim` on `host:port` (0 picks a free port) in the running loop until the block ends."""
    server = uvicorn.Server(simulator_config(sim, host, port))
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if task.done():
        task.result()
        raise RuntimeError("the simulator server stopped while starting")
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningSimulator(f"http://{host}:{bound}", bound, server, task)
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m foreman_adapters.simulator", description="A simulated Ollama with one GPU."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--load-delay", type=float, default=1.5, help="seconds per model swap")
    parser.add_argument("--ttft", type=float, default=0.15, help="seconds to the first token")
    parser.add_argument("--token-delay", type=float, default=0.03, help="seconds between tokens")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    return parser.parse_args(argv)


async def _serve_until_stopped(sim: SimulatedOllama, host: str, port: int) -> None:
    async with serve_simulator(sim, host, port) as running:
        print(f"listening on {running.url}", flush=True)
        await asyncio.shield(running.task)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a simulator until SIGINT/SIGTERM; prints `listening on URL` once ready."""
    args = _arguments(argv)
    sim = SimulatedOllama(
        load_delay=args.load_delay, ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens
    )
    asyncio.run(_serve_until_stopped(sim, args.host, args.port))
