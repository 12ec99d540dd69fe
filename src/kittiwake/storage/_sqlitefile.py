"""The small SQLite files under DATA that hold what the server remembers of its
clients (greylisting, rate limits, spam traps, failed AUTHs), one file each.

Every worker process opens the same file, so what one worker counts the others see.
Each call runs in one thread of its own (the event loop never waits on a lock another
process holds) inside ``BEGIN IMMEDIATE``, so a read-then-write is atomic across
processes. The file is WAL-mode with ``synchronous=NORMAL``: these are counters and
triplets, and losing the last instants of them in a power cut costs nothing that
matters, while an fsync per RCPT would.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["SqliteFile", "connect"]

_T = TypeVar("_T")


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating it 0600, its directory 0700) one such file: WAL,
    ``synchronous=NORMAL``, autocommit (transactions are explicit), usable from any
    thread (the caller serializes with a lock).

    Raises:
        sqlite3.Error, OSError: the file cannot be used.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteFile:
    """One SQLite file and the thread that talks to it.

    Args:
        path: the file (created 0600, its directory 0700).
        schema: statements run once at open (``CREATE TABLE IF NOT EXISTS ...``).
        busy_timeout: seconds to wait for another process's write lock.
    """

    def __init__(self, path: Path, schema: Sequence[str], busy_timeout: float = 5.0) -> None:
        self.path = path
        self._conn = connect(path, busy_timeout)
        self._lock = threading.Lock()
        self.transaction(lambda conn: [conn.execute(statement) for statement in schema])
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kw-{path.stem}")

    def transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in one write transaction, in the calling thread (blocking)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in one write transaction, in the database's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transaction, fn)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            self._conn.close()
