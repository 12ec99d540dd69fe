"""Connection counting for connectionLimit and connectionLimitPerIP.

One process counts in dictionaries (``LocalLimits``). Several worker processes share one
count (``SharedLimits``): a small shared-memory table created before the workers are
forked, guarded by one process-shared lock, so a limit holds for the listener as a whole,
not per worker (issue 2, point 6).
"""

from __future__ import annotations

import multiprocessing
import zlib
from collections import Counter
from typing import Protocol

__all__ = ["ConnectionLimits", "LocalLimits", "SharedLimits"]

#: per-IP counters per listener in shared memory; addresses hash into these slots
IP_SLOTS = 4096


class ConnectionLimits(Protocol):
    def acquire(self, listener: int, ip: str, total: int, per_ip: int) -> str | None:
        """Count a connection in. Returns None when admitted, else which limit
        ("total" or "per_ip") refused it. A limit of 0 means no limit."""
        ...

    def release(self, listener: int, ip: str) -> None: ...


class LocalLimits:
    """Counts for one process."""

    def __init__(self) -> None:
        self._total: Counter[int] = Counter()
        self._per_ip: Counter[tuple[int, str]] = Counter()

    def acquire(self, listener: int, ip: str, total: int, per_ip: int) -> str | None:
        if total and self._total[listener] >= total:
            return "total"
        key = (listener, ip)
        if per_ip and self._per_ip[key] >= per_ip:
            return "per_ip"
        self._total[listener] += 1
        self._per_ip[key] += 1
        return None

    def release(self, listener: int, ip: str) -> None:
        self._total[listener] -= 1
        key = (listener, ip)
        self._per_ip[key] -= 1
        if self._per_ip[key] <= 0:
            del self._per_ip[key]


class SharedLimits:
    """Counts shared by forked worker processes.

    Each worker counts in its own row and checks the sum of all rows, so when a worker
    dies the supervisor clears its row (``reset_worker``) and no count leaks. Two
    addresses that hash to the same slot share a count: that can refuse a client early,
    never admit one too many, which is the safe side of a limit.
    """

    def __init__(self, listeners: int, workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self._lock = ctx.Lock()
        self._listeners = max(1, listeners)
        self._workers = max(1, workers)
        self._total = ctx.RawArray("i", self._workers * self._listeners)
        self._per_ip = ctx.RawArray("i", self._workers * self._listeners * IP_SLOTS)
        self._worker = 0

    def bind_worker(self, index: int) -> None:
        """Called in a worker after the fork: count in row ``index``."""
        self._worker = index

    def reset_worker(self, index: int) -> None:
        """A worker died: forget its connections."""
        with self._lock:
            for listener in range(self._listeners):
                self._total[index * self._listeners + listener] = 0
            base = index * self._listeners * IP_SLOTS
            for slot in range(base, base + self._listeners * IP_SLOTS):
                self._per_ip[slot] = 0

    def _slot(self, worker: int, listener: int, ip: str) -> int:
        return (worker * self._listeners + listener) * IP_SLOTS + zlib.crc32(ip.encode()) % IP_SLOTS

    def acquire(self, listener: int, ip: str, total: int, per_ip: int) -> str | None:
        workers = range(self._workers)
        n = self._listeners
        with self._lock:
            if total and sum(self._total[w * n + listener] for w in workers) >= total:
                return "total"
            if per_ip and sum(self._per_ip[self._slot(w, listener, ip)] for w in workers) >= per_ip:
                return "per_ip"
            self._total[self._worker * n + listener] += 1
            self._per_ip[self._slot(self._worker, listener, ip)] += 1
        return None

    def release(self, listener: int, ip: str) -> None:
        mine = self._worker * self._listeners + listener
        slot = self._slot(self._worker, listener, ip)
        with self._lock:
            self._total[mine] = max(0, self._total[mine] - 1)
            self._per_ip[slot] = max(0, self._per_ip[slot] - 1)
