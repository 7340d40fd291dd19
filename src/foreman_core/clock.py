"""The real clock and id generator behind the Clock and IdGenerator ports."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)


def is_ulid(text: str) -> bool:
    """Whether `text` has the shape of an id `UlidGenerator` makes: 26 Crockford base32 digits."""
    return len(text) == 26 and all(c in _CROCKFORD_SET for c in text)


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)


class UlidGenerator:
    """26-character ULIDs, monotonic within one process (ids sort in the order they were made)."""

    RANDOM_BYTES_PER_READ = 4000
    """os.urandom is read this much at a time: one system call per 400 ids, not one each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0
        self._random_bytes = b""

    def new_id(self) -> str:
        """A new ULID, greater than every id this generator made before."""
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_random + 1
            else:
                if len(self._random_bytes) < 10:
                    self._random_bytes = os.urandom(self.RANDOM_BYTES_PER_READ)
                rand = int.from_bytes(self._random_bytes[:10], "big")
                self._random_bytes = self._random_bytes[10:]
            self._last_ms, self._last_random = ms, rand
        value = (ms << 80) | (rand & ((1 << 80) - 1))
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
