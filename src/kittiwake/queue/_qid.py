"""Queue IDs: 12 characters, unique across processes and restarts, sorted by time.

An ID is 60 bits written in Crockford's base-32 alphabet (``0-9A-Z`` without
``I L O U``), whose characters are in ASCII order, so IDs sort as their numbers do:

====  =========================================================================
bits  meaning
====  =========================================================================
42    milliseconds since 2024-01-01 UTC (enough until the year 2163)
8     the spool *slot* of the process (0-255), held under an exclusive lock, so
      no two live processes share it
10    a counter within the millisecond; when it runs out, the clock part is
      borrowed one millisecond ahead (the allocator's clock never goes back)
====  =========================================================================

Uniqueness across restarts needs the clock part never to repeat for a slot; the
allocator starts above a floor the spool persists for the slot (the highest time it
has handed out, saved about once a second), so a wall clock stepped backwards does not
reissue old IDs. The ID also names the message's Maildir file, which is why it must
be unique over history, not only among the messages now in the spool.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

__all__ = [
    "EPOCH_MS",
    "MAX_SLOTS",
    "QUEUE_ID_LENGTH",
    "QueueIdAllocator",
    "is_queue_id",
    "queue_id_slot",
    "queue_id_time",
]

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MAX_SLOTS = 256
QUEUE_ID_LENGTH = 12
_COUNTER_BITS = 10
_SLOT_BITS = 8
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_TIME_SHIFT = _COUNTER_BITS + _SLOT_BITS

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters (10 bits) per lookup: six lookups per ID. (base64.b32encode is pure
# Python in 3.11 and several times slower; this runs once per message.)
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_VALUES = {c: i for i, c in enumerate(_CROCKFORD)}
_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{12}\Z")


def _encode(n: int) -> str:
    p = _PAIRS
    return (
        p[n >> 50]
        + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023]
        + p[(n >> 20) & 1023]
        + p[(n >> 10) & 1023]
        + p[n & 1023]
    )


def _decode(queue_id: str) -> int:
    n = 0
    for c in queue_id:
        n = (n << 5) | _VALUES[c]
    return n


def is_queue_id(name: str) -> bool:
    """True if ``name`` has the form of a queue ID (used to tell spool files apart)."""
    return _PATTERN.match(name) is not None


def queue_id_time(queue_id: str) -> float:
    """Return the Unix time (seconds) encoded in ``queue_id``.

    Raises:
        ValueError: not a queue ID.
    """
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")
    return ((_decode(queue_id) >> _TIME_SHIFT) + EPOCH_MS) / 1000.0


def queue_id_slot(queue_id: str) -> int:
    """Return the spool slot encoded in ``queue_id``.

    Raises:
        ValueError: not a queue ID.
    """
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")
    return (_decode(queue_id) >> _COUNTER_BITS) & (MAX_SLOTS - 1)


def _wall_clock() -> float:
    return time.time()


class QueueIdAllocator:
    """Hands out queue IDs for one slot. Not thread-safe: call it from one thread
    (the event loop), which is where sessions begin their messages."""

    def __init__(
        self,
        slot: int,
        *,
        floor_ms: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Args:
        slot: 0-255, held exclusively by this process.
        floor_ms: IDs are issued strictly after this Unix time in milliseconds.
        clock: the wall clock in seconds (default: ``time.time``, looked up at
            each call so that tests can replace it).

        Raises:
            ValueError: slot out of range.
        """
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"slot {slot} out of range")
        self._slot_bits = slot << _COUNTER_BITS
        self._clock = clock or _wall_clock
        self._ms = max(floor_ms - EPOCH_MS, 0)  # last millisecond used
        self._counter = _COUNTER_MAX  # forces a fresh millisecond on first use

    @property
    def high_water_ms(self) -> int:
        """The latest Unix time in milliseconds used so far (persist it to survive
        a clock that is set back across a restart)."""
        return self._ms + EPOCH_MS

    def next(self) -> str:
        """Return a new queue ID."""
        now = int(self._clock() * 1000) - EPOCH_MS
        if now > self._ms:
            self._ms, self._counter = now, 0
        elif self._counter < _COUNTER_MAX:
            self._counter += 1
        else:
            # More than 1024 IDs in this millisecond, or the clock went back:
            # borrow the next millisecond, so IDs stay unique and ordered.
            self._ms += 1
            self._counter = 0
        return _encode((self._ms << _TIME_SHIFT) | self._slot_bits | self._counter)
