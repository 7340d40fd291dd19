"""Running the simulator on a real socket (aiohttp's web server), in-process or as `python -m`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiohttp import web

from foreman_adapters.simulator.app import SimulatedOllama
from foreman_adapters.simulator.asgi_bridge import AsgiApp, asgi_application


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator listening on a socket."""

    url: str
    port: int


STOP_GRACE = 0.5
"""Seconds a request still in flight when the simulator stops gets to finish before its
connection is dropped (its app run hears `http.disconnect`, then is cancelled)."""


@contextlib.asynccontextmanager
async def serve_simulator(
    sim: AsgiApp, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve `sim` (a `SimulatedOllama`, or any ASGI app) on `host:port` (0 picks a free port)
    in the running loop until the block ends."""
    runner = web.AppRunner(
        asgi_application(sim),
        handler_cancellation=True,  # how a departed client becomes `http.disconnect`
        access_log=None,
        shutdown_timeout=STOP_GRACE,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        yield RunningSimulator(f"http://{host}:{bound}", bound)
    finally:
        await runner.cleanup()


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve_simulator(sim, host, port) as running:
        print(f"listening on {running.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a simulator until SIGINT/SIGTERM; prints `listening on URL` once ready."""
    args = _arguments(argv)
    sim = SimulatedOllama(
        load_delay=args.load_delay, ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens
    )
    asyncio.run(_serve_until_stopped(sim, args.host, args.port))
