"""What the handlers that remember keep, in SQLite files under DATA: greylisting
(``greylist.db``), rate limits (``ratelimit.db``) and spam traps (``spamtrap.db``).

One file each, apart from ``kittiwake.db``: these are written on every RCPT, and a
write there would make every process reload its copy of the users and domains. How the
files are opened and shared between worker processes: :mod:`._sqlitefile`. Each store
call is one ``BEGIN IMMEDIATE`` transaction in the store's own thread; the decisions
are the pure rules of :mod:`kittiwake.policy.greylist` and
:mod:`kittiwake.policy.ratelimit`.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from kittiwake.policy.greylist import (
    GreylistEntry,
    GreylistTimes,
    GreylistVerdict,
    Triplet,
    greylist_step,
)
from kittiwake.policy.ratelimit import WindowLimit, admits, window_of
from kittiwake.storage._sqlitefile import SqliteFile

__all__ = [
    "SqliteGreylistStore",
    "SqliteHookStores",
    "SqliteRateLimitStore",
    "SqliteSpamTrapStore",
]

_GREYLIST_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS greylist ("
    " network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
    " first_seen REAL NOT NULL, last_seen REAL NOT NULL, passed INTEGER NOT NULL,"
    " PRIMARY KEY (network, sender, recipient)) WITHOUT ROWID",
)
_RATELIMIT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters ("
    " key TEXT NOT NULL, slot INTEGER NOT NULL, count INTEGER NOT NULL,"
    " expires REAL NOT NULL, PRIMARY KEY (key, slot)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires)",
)
_SPAMTRAP_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blocked (client TEXT PRIMARY KEY NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
)
#: share of greylist and spam-trap checks that also delete what expired
_CLEANUP_CHANCE = 0.01
#: rate-limit checks between two deletions of expired windows
_CLEANUP_EVERY = 1000


class SqliteGreylistStore:
    """A :class:`~kittiwake.storage.base.GreylistStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        """Raises: sqlite3.Error, OSError: the file cannot be used."""
        self._db = SqliteFile(path, _GREYLIST_SCHEMA)

    async def check(self, triplet: Triplet, now: float, times: GreylistTimes) -> GreylistVerdict:
        return await self._db.run(lambda conn: self._check(conn, triplet, now, times))

    @staticmethod
    def _check(
        conn: sqlite3.Connection, triplet: Triplet, now: float, times: GreylistTimes
    ) -> GreylistVerdict:
        row = conn.execute(
            "SELECT first_seen, last_seen, passed FROM greylist"
            " WHERE network = ? AND sender = ? AND recipient = ?",
            triplet,
        ).fetchone()
        if random.random() < _CLEANUP_CHANCE:
            conn.execute(
                "DELETE FROM greylist WHERE (passed = 0 AND first_seen < ?) OR last_seen < ?",
                (now - times.unseen_life, now - times.whitelist_life),
            )
        entry = GreylistEntry(*row) if row is not None else None
        verdict, new = greylist_step(entry, now, times)
        if verdict is GreylistVerdict.PASS:
            assert new is not None
            conn.execute(
                "UPDATE greylist SET last_seen = ?, passed = passed + 1"
                " WHERE network = ? AND sender = ? AND recipient = ?",
                (new.last_seen, *triplet),
            )
        elif new is not None:
            conn.execute(
                "INSERT OR REPLACE INTO greylist VALUES (?, ?, ?, ?, ?, ?)",
                (*triplet, new.first_seen, new.last_seen, new.passed),
            )
        return verdict

    def close(self) -> None:
        self._db.close()


class SqliteRateLimitStore:
    """A :class:`~kittiwake.storage.base.RateLimitStore` in one SQLite file: one row
    per key and fixed window, kept until the window after next has begun."""

    def __init__(self, path: Path) -> None:
        """Raises: sqlite3.Error, OSError: the file cannot be used."""
        self._db = SqliteFile(path, _RATELIMIT_SCHEMA)
        self._checks = 0

    async def take(self, limits: Sequence[WindowLimit], now: float) -> WindowLimit | None:
        self._checks += 1
        cleanup = self._checks % _CLEANUP_EVERY == 0

        def count(conn: sqlite3.Connection) -> None:
            if cleanup:
                conn.execute("DELETE FROM counters WHERE expires < ?", (now,))
            for limit in limits:
                if not self._take(conn, limit, now):
                    raise _Over(limit)  # rolls back: nothing of this event stays counted

        try:
            await self._db.run(count)
        except _Over as over:
            return over.limit
        return None

    @staticmethod
    def _take(conn: sqlite3.Connection, limit: WindowLimit, now: float) -> bool:
        window = window_of(now, limit.period)
        rows = dict(
            conn.execute(
                "SELECT slot, count FROM counters WHERE key = ? AND slot IN (?, ?)",
                (limit.key, window, window - 1),
            ).fetchall()
        )
        if not admits(limit, rows.get(window - 1, 0), rows.get(window, 0), now):
            return False
        conn.execute(
            "INSERT INTO counters VALUES (?, ?, 1, ?)"
            " ON CONFLICT (key, slot) DO UPDATE SET count = count + 1",
            (limit.key, window, (window + 2) * limit.period),
        )
        return True

    def close(self) -> None:
        self._db.close()


class _Over(Exception):
    """A limit is reached: rolls the transaction back (nothing counted)."""

    def __init__(self, limit: WindowLimit) -> None:
        super().__init__(limit.key)
        self.limit = limit


class SqliteSpamTrapStore:
    """A :class:`~kittiwake.storage.base.SpamTrapStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        """Raises: sqlite3.Error, OSError: the file cannot be used."""
        self._db = SqliteFile(path, _SPAMTRAP_SCHEMA)

    async def check(self, client: str, now: float, block_until: float | None = None) -> bool:
        def check(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT until FROM blocked WHERE client = ?", (client,)).fetchone()
            if row is not None and row[0] > now:
                return True
            if block_until is not None:
                conn.execute("INSERT OR REPLACE INTO blocked VALUES (?, ?)", (client, block_until))
                if random.random() < _CLEANUP_CHANCE:
                    conn.execute("DELETE FROM blocked WHERE until < ?", (now,))
                return True
            return False

        return await self._db.run(check)

    def close(self) -> None:
        self._db.close()


class SqliteHookStores:
    """A :class:`~kittiwake.storage.base.HookStores` over the files in ``data_dir``
    (DATA); a file is created when a handler that needs it starts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def greylist(self) -> SqliteGreylistStore:
        return SqliteGreylistStore(self.data_dir / "greylist.db")

    def rate_limits(self) -> SqliteRateLimitStore:
        return SqliteRateLimitStore(self.data_dir / "ratelimit.db")

    def spam_traps(self) -> SqliteSpamTrapStore:
        return SqliteSpamTrapStore(self.data_dir / "spamtrap.db")
