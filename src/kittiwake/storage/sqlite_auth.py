"""The per-IP budget of failed AUTH attempts in SQLite (``DATA/auth-failures.db``),
shared by every worker process.

An address with ``limit`` failures within ``window`` seconds gets ``454 4.7.0`` to
every AUTH for the next ``window`` seconds (issue 5, point 5; defaults 10 and 600). The
counts live in a small SQLite file of their own, not in ``kittiwake.db``: a failure is a
write, and a write there would make every process reload its cached copy of the users
and domains.

WAL mode, ``synchronous=NORMAL`` (losing the last failures in a power cut only forgives
a few attempts; :mod:`._sqlitefile`), one connection per process behind a lock. The
calls block: the session runs them in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from kittiwake.policy.ratelimit import over_budget
from kittiwake.storage._sqlitefile import connect

__all__ = ["SqliteAuthFailureStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS failures (ip TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failures_ip ON failures (ip, at)",
    "CREATE INDEX IF NOT EXISTS failures_at ON failures (at)",
    "CREATE TABLE IF NOT EXISTS blocks (ip TEXT PRIMARY KEY NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
)


class SqliteAuthFailureStore:
    """A :class:`~kittiwake.storage.base.AuthFailureStore` in a SQLite file."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0
    ) -> None:
        """Open (creating if needed) the database at ``path``.

        Raises:
            sqlite3.Error, OSError: the file cannot be used.
        """
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = connect(path, busy_timeout)
        for statement in _SCHEMA:
            self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def blocked(self, ip: str) -> bool:
        """``ip`` is in its penalty time: every AUTH gets 454 4.7.0."""
        with self._lock:
            row = self._conn.execute("SELECT until FROM blocks WHERE ip = ?", (ip,)).fetchone()
        return row is not None and float(row[0]) > self._clock()

    def record_failure(self, ip: str, *, limit: int, window: float) -> bool:
        """Count one failure of ``ip``.

        Args:
            limit: failures within ``window`` that block the address (0: never).
            window: seconds counted back, and seconds the block lasts.

        Returns:
            True if this failure used up the budget (the address is now blocked).
        """
        now = self._clock()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM failures WHERE at <= ?", (now - window,))
                conn.execute("DELETE FROM blocks WHERE until <= ?", (now,))
                conn.execute("INSERT INTO failures (ip, at) VALUES (?, ?)", (ip, now))
                (count,) = conn.execute(
                    "SELECT count(*) FROM failures WHERE ip = ? AND at > ?", (ip, now - window)
                ).fetchone()
                blocked = over_budget(int(count), limit)
                if blocked:
                    conn.execute(
                        "INSERT OR REPLACE INTO blocks (ip, until) VALUES (?, ?)",
                        (ip, now + window),
                    )
                    conn.execute("DELETE FROM failures WHERE ip = ?", (ip,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return blocked
