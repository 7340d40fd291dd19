"""Running foreman: settings from the environment, the app under uvicorn, a clean exit."""

from __future__ import annotations

import atexit
import logging.config
import logging.handlers
import os
import queue
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import uvicorn

from foreman_app.app import create_app
from foreman_app.config import ConfigError, Settings, without_credentials
from foreman_app.container import Container, build_container

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

logger = logging.getLogger("foreman.server")


class StartupFailed(Exception):
    """foreman cannot start; the message is the one line to print, `status` the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; the exit status (2: invalid configuration)."""
    try:
        container = configured_container(os.environ if environ is None else environ)
    except StartupFailed as failure:
        print(f"foreman: {failure}", file=sys.stderr)
        return failure.status
    settings = container.settings()
    logger.info(
        "foreman: target %s, database %s, auth %s",
        without_credentials(settings.ollama_url),
        settings.db_path,
        "on" if settings.auth_tokens else "off",
    )
    return run_uvicorn(create_app(container), settings)


def demo(environ: Mapping[str, str] | None = None) -> int:
    """Run the server in front of the built-in simulated Ollama, with sample jobs (demo.py)."""
    from foreman_app.demo import run_demo  # demo.py builds on this module: import it late

    return run_demo(environ)


def configured_container(environ: Mapping[str, str]) -> Container:
    """Settings read from `environ`, logging configured, the database opened: ready to serve.

    Raises `StartupFailed` (status 2 for an invalid variable, 1 for a database that cannot be
    opened) with a one-line message instead of a traceback.
    """
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        raise StartupFailed(str(exc), EXIT_BAD_CONFIG) from None
    configure_logging(settings.log_level)
    container = build_container(settings)
    try:
        container.store()  # open the database now: a bad path is one line, not a traceback
    except Exception as exc:
        raise StartupFailed(
            f"cannot open the database {settings.db_path}: {exc}", EXIT_FAILED
        ) from None
    return container


def configure_logging(level: str) -> None:
    """Log at `level` to stderr, through a queue: uvicorn's loggers propagate to the root logger.

    A record is made on the event loop and written to stderr by the standard library's
    `QueueListener` thread (the logging cookbook's "Dealing with handlers that block"): the
    access line of every request would otherwise be formatted and written while its answer goes
    out (ADR 0021). What LOG_FORMAT never shows (the caller's file and line, thread, process) is
    not collected: the logging HOWTO's "Optimization"; a record then costs about half as much.
    """
    global _listener
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "root": {"level": level.upper()},
            # httpx logs every request at INFO: the access log already says enough.
            "loggers": {
                name: {"level": "DEBUG" if level == "debug" else "WARNING"}
                for name in ("httpx", "httpcore")
            },
        }
    )
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(LOG_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logging.getLogger().addHandler(logging.handlers.QueueHandler(records))
    if _listener is not None:
        _listener.stop()
    _listener = logging.handlers.QueueListener(records, stderr)
    _listener.start()


_listener: logging.handlers.QueueListener | None = None
"""The thread that writes log records to stderr, once logging is configured."""


@atexit.register
def _flush_logs() -> None:
    """Write the records still queued before the process exits."""
    if _listener is not None:
        _listener.stop()


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves foreman, with public `uvicorn.Config` options only: the configured
    address, on httptools; foreman's logging, with uvicorn's access line at `info` and below;
    a graceful stop bounded by FOREMAN_SHUTDOWN_GRACE."""
    access_log = logging.getLevelNamesMapping()[settings.log_level.upper()] <= logging.INFO
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.listen_host,
        port=settings.listen_port,
        log_level=settings.log_level,
        log_config=None,
        access_log=access_log,
        http="httptools",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace.total_seconds())),
    )


def run_uvicorn(app: object, settings: Settings) -> int:
    """Serve `app` on the configured address until a signal asks to stop."""
    server = uvicorn.Server(uvicorn_config(app, settings))
    try:
        with _signals_end_quietly():
            server.run()
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return EXIT_OK if server.started else EXIT_FAILED


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """After a graceful shutdown uvicorn re-raises the signal it caught, to reach the handler
    that was there before it; make that handler a no-op so a stop by signal exits 0."""
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _ignore) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    """A signal that arrives once uvicorn has stopped: nothing left to stop."""
