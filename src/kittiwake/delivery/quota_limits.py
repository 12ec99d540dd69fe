"""Where a mailbox's quota limits come from: a per-user override (``kittiwake quota
set``, in ``DATA/quota.db``), else ``kittiwake.xml``'s ``<quota>`` default (see
``docs/quota.md``). The ``maildirsize`` mechanics are in :mod:`.quota`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from kittiwake.delivery.quota import Limit

__all__ = ["QuotaOverrides", "Quotas"]


class QuotaOverrides:
    """Per-user limits set with ``kittiwake quota set``: ``DATA/quota.db`` (SQLite, WAL).

    Reads come from an in-memory copy, reloaded when ``PRAGMA data_version`` says
    another connection (the CLI) committed; checked at most every ``refresh_interval``
    seconds. Thread-safe.
    """

    def __init__(self, path: Path, *, refresh_interval: float = 0.0) -> None:
        """Raises:
        sqlite3.Error, OSError: the database cannot be opened or created."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS quotas (name TEXT PRIMARY KEY NOT NULL,"
            " storage INTEGER NOT NULL, messages INTEGER NOT NULL) WITHOUT ROWID"
        )
        self._lock = threading.Lock()
        self._interval = refresh_interval
        self._checked = float("-inf")
        self._version: int | None = None
        self._limits: dict[str, Limit] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get(self, user: str) -> Limit | None:
        """The override for ``user`` (canonical), None if it has none."""
        with self._lock:
            self._refresh()
            return self._limits.get(user)

    def any(self) -> bool:
        """Some user has an override."""
        with self._lock:
            self._refresh()
            return bool(self._limits)

    def set(self, user: str, limit: Limit | None) -> None:
        """Set (None: remove) the override for ``user`` (canonical)."""
        with self._lock:
            if limit is None:
                self._conn.execute("DELETE FROM quotas WHERE name = ?", (user,))
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO quotas VALUES (?, ?, ?)",
                    (user, limit.storage, limit.messages),
                )
            self._version = None

    def _refresh(self) -> None:
        if self._interval:
            now = time.monotonic()
            if self._version is not None and now - self._checked < self._interval:
                return
            self._checked = now
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        rows = self._conn.execute("SELECT name, storage, messages FROM quotas").fetchall()
        self._limits = {name: Limit(s, m) for name, s, m in rows}
        self._version = version


class Quotas:
    """The limit of each mailbox: its override, else the default.

    Args:
        default: ``kittiwake.xml <quota>``; an empty :class:`Limit` for none.
        overrides: per-user limits (None: none).
        final: over quota is a permanent failure for LMTP (552 5.2.2, as James and
            Dovecot by default); False: temporary (452 4.2.2, Dovecot's
            ``quota_full_tempfail``).
    """

    def __init__(
        self, default: Limit, overrides: QuotaOverrides | None = None, *, final: bool = True
    ) -> None:
        self.default = default
        self.overrides = overrides
        self.final = final

    @property
    def active(self) -> bool:
        """Some mailbox may have a limit (a default, or an override)."""
        return bool(self.default) or (self.overrides is not None and self.overrides.any())

    def limit_for(self, mailbox: str) -> Limit | None:
        """The override of ``mailbox``, else the default; None if neither sets a limit:
        then the limits in an existing ``maildirsize`` header apply (Dovecot's or
        Courier's, see :func:`file_limit`). An explicit "unlimited" override is an
        empty :class:`Limit`, not None."""
        if self.overrides is not None:
            found = self.overrides.get(mailbox)
            if found is not None:
                return found
        return self.default if self.default else None
