"""The real clock and id generator behind the Clock and IdGenerator ports."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)
_DIGIT_PAIRS = [first + second for first in _CROCKFORD for second in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


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
        self._random = b""
        self._random_used = 0

    def new_id(self) -> str:
        """A new ULID, greater than every id this generator made before."""
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_random + 1
            else:
                used = self._random_used
                if used + 10 > len(self._random):
                    self._random, used = os.urandom(self.RANDOM_BYTES_PER_READ), 0
                rand = int.from_bytes(self._random[used : used + 10], "big")
                self._random_used = used + 10
            self._last_ms, self._last_random = ms, rand
        value = (ms << 80) | (rand & ((1 << 80) - 1))
        # 26 base32 digits hold 130 bits, the first two zero; written two digits at a time.
        return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])
