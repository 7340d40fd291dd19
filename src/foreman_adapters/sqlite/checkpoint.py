"""The background WAL checkpointer of the job store (ADR 0014)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

CHECKPOINT_INTERVAL = 0.25
"""Seconds between the background copies of the WAL into the database file (ADR 0014)."""

logger = logging.getLogger("foreman.store")


class Checkpointer:
    """Every `interval` seconds, calls `on_tick`, then copies the WAL into the database file.

    `on_tick` writes what save_later left pending (ADR 0015). The copy runs on a thread and a
    connection of its own, so that the WAL seldom reaches the 1,000 pages at which SQLite
    checkpoints inside a commit, on the event loop. A PASSIVE checkpoint never waits for the
    writer nor makes it wait. SQLite's own checkpoint stays as the bound under a burst of
    writes faster than this (ADR 0014).
    """

    def __init__(self, path: str, interval: float, on_tick: Callable[[], None]) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._interval = interval
        self._on_tick = on_tick
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreman-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the checkpoint under way, if any, and close the connection."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        failing = False
        try:
            while not self._stopping.wait(self._interval):
                self._on_tick()
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    if not failing:  # once per run of failures, not four times a second
                        logger.warning("WAL checkpoint failed (retrying): %s", exc)
                    failing = True
                else:
                    failing = False
        finally:
            self._conn.close()
