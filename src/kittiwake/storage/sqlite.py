"""Domains, users and the rewrite table in one SQLite file (``DATA/kittiwake.db``): the
embedded default.

Theory of operation
-------------------
The server asks "is this domain local?" and "does this user exist?" several times per
message, and the CLI changes the answers from another process. So reads are served
from an in-memory copy of both tables, and the copy is reloaded when
``PRAGMA data_version`` changes. SQLite bumps that number on a connection whenever
*another* connection (this process or any other) has committed a change since the last
read; our own writes do not bump it, so a write here drops the copy explicitly.

Checking ``data_version`` costs about 4 µs (one statement through the ``sqlite3``
module; measured on the 2-core dev box, see ``tests/storage``); a set lookup costs
0.06 µs. The check is made on every call by default, so a CLI change is visible to the
very next lookup with no window at all. A server that prefers fewer checks can pass
``refresh_interval`` (seconds): the copy is then trusted for that long, and a change
shows up at most that late.

The file is WAL-mode (readers never block the CLI writer and vice versa), created
0600 (it holds password hashes; SQLite gives the ``-wal`` and ``-shm`` files the same
mode), with ``synchronous=FULL`` so a CLI change that returned survives a crash. The
schema version lives in ``PRAGMA user_version``; each step in :data:`_MIGRATIONS` takes
the file one version up, inside one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

from kittiwake.policy.rewrite import EMPTY_TABLE, Mapping, MappingKind, RewriteTable
from kittiwake.storage._names import domain_key, user_key

__all__ = ["SCHEMA_VERSION", "SchemaVersionError", "SqliteStore"]

#: ``_MIGRATIONS[i]`` takes the schema from version i to i + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE domains (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID",
        "CREATE TABLE users (name TEXT PRIMARY KEY NOT NULL, password_hash TEXT) WITHOUT ROWID",
    ),
    (
        # The recipient rewrite table (issue 5): kind is a MappingKind value.
        "CREATE TABLE rewrites (kind TEXT NOT NULL, source TEXT NOT NULL,"
        " target TEXT NOT NULL, PRIMARY KEY (source, kind, target)) WITHOUT ROWID",
    ),
)
#: the schema version this code writes
SCHEMA_VERSION = len(_MIGRATIONS)


class SchemaVersionError(RuntimeError):
    """The database was written by a newer kittiwake (its schema version is unknown)."""


class SqliteStore:
    """A :class:`~kittiwake.storage.base.DomainStore` and
    :class:`~kittiwake.storage.base.UserStore` in one SQLite file.

    Safe to share between threads (one connection behind a lock). Names are stored and
    looked up in canonical form (:mod:`kittiwake.storage._names`).
    """

    def __init__(
        self, path: Path, *, refresh_interval: float = 0.0, busy_timeout: float = 10.0
    ) -> None:
        """Open (creating if needed) the database at ``path``.

        Args:
            path: the database file; its directory is created (0700) if missing.
            refresh_interval: seconds to trust the in-memory copy before asking SQLite
                whether another connection changed the tables; 0 = ask on every call.
            busy_timeout: seconds to wait for another process's write lock.

        Raises:
            SchemaVersionError: the file has a schema newer than this code.
            sqlite3.Error: the file is not a usable SQLite database.
            OSError: the file or its directory cannot be created.
        """
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file ourselves so that it is 0600 from its first byte; SQLite would
        # use 0644 (subject to umask). O_EXCL is not needed: an existing file is kept.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.RLock()
        self._refresh_interval = refresh_interval
        self._checked_at = float("-inf")
        self._version: int | None = None
        self._domains: frozenset[str] = frozenset()
        self._users: dict[str, str | None] = {}
        self._table = EMPTY_TABLE
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise
        self._cur = self._conn.cursor()

    def _setup(self) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - only on odd file systems
            raise sqlite3.OperationalError(f"{self.path}: cannot use WAL mode ({mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path}: schema version {version} is newer than this kittiwake "
                    f"({SCHEMA_VERSION}); use a newer kittiwake"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                # PRAGMA takes no parameters; the value is our own integer constant.
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection; the store must not be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the in-memory copy ----------------------------------------------------

    def _refresh(self) -> None:
        """Reload the copy if another connection committed since we last looked.
        Call with the lock held."""
        if self._refresh_interval:
            now = time.monotonic()
            if self._version is not None and now - self._checked_at < self._refresh_interval:
                return
            self._checked_at = now
        version = self._cur.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        # Read data_version *before* the tables: a commit landing in between bumps it
        # again, so the next call reloads; we may reload twice, never miss a change.
        cur = self._cur
        cur.execute("BEGIN")
        try:
            domains = frozenset(row[0] for row in cur.execute("SELECT name FROM domains"))
            users = dict(cur.execute("SELECT name, password_hash FROM users").fetchall())
            rows = cur.execute("SELECT kind, source, target FROM rewrites").fetchall()
        finally:
            cur.execute("COMMIT")
        table = RewriteTable(Mapping(MappingKind(k), src, dst) for k, src, dst in rows)
        self._domains, self._users, self._version = domains, users, version
        self._table = table if table.mappings != self._table.mappings else self._table

    def _changed(self) -> None:
        # Our own commits do not move data_version on this connection: force a reload.
        self._version = None

    def _write(self, sql: str, params: tuple[str | None, ...]) -> bool:
        with self._lock:
            changed = self._cur.execute(sql, params).rowcount > 0
            if changed:
                self._changed()
            return changed

    # -- domains ---------------------------------------------------------------

    def add_domain(self, domain: str) -> bool:
        """Add a domain.

        Args:
            domain: any case, U- or A-labels; stored canonical.

        Returns:
            False if it was already there.

        Raises:
            InvalidName: no canonical form, or unsafe as a directory name.
            sqlite3.Error: the database could not be written.
        """
        return self._write("INSERT OR IGNORE INTO domains (name) VALUES (?)", (domain_key(domain),))

    def remove_domain(self, domain: str) -> bool:
        """Remove a domain (its users stay); returns False if it was not there.

        Raises:
            InvalidName: no canonical form.
            sqlite3.Error: the database could not be written.
        """
        return self._write("DELETE FROM domains WHERE name = ?", (domain_key(domain),))

    def list_domains(self) -> list[str]:
        """Return the canonical domain names, sorted."""
        with self._lock:
            self._refresh()
            return sorted(self._domains)

    def contains_domain(self, domain: str) -> bool:
        """True if ``domain`` (any form) is local; False also for an invalid name."""
        try:
            key = domain_key(domain)
        except ValueError:
            return False
        with self._lock:
            self._refresh()
            return key in self._domains

    # -- users -----------------------------------------------------------------

    def add_user(self, username: str, password_hash: str | None) -> bool:
        """Add a user (a full address).

        Args:
            username: ``local@domain``, stored canonical.
            password_hash: the hash to keep, or None for a user who cannot log in.

        Returns:
            False if the user was already there (its hash is left unchanged).

        Raises:
            InvalidName: not a valid, safe address.
            sqlite3.Error: the database could not be written.
        """
        return self._write(
            "INSERT OR IGNORE INTO users (name, password_hash) VALUES (?, ?)",
            (user_key(username), password_hash),
        )

    def remove_user(self, username: str) -> bool:
        """Remove a user; returns False if it was not there.

        Raises:
            InvalidName: not a valid address.
            sqlite3.Error: the database could not be written.
        """
        return self._write("DELETE FROM users WHERE name = ?", (user_key(username),))

    def list_users(self) -> list[str]:
        """Return the canonical user names, sorted."""
        with self._lock:
            self._refresh()
            return sorted(self._users)

    def contains_user(self, username: str) -> bool:
        """True if the user exists; False also for an invalid name."""
        try:
            key = user_key(username)
        except ValueError:
            return False
        with self._lock:
            self._refresh()
            return key in self._users

    def set_password_hash(self, username: str, password_hash: str) -> bool:
        """Replace a user's password hash; returns False if there is no such user.

        Raises:
            InvalidName: not a valid address.
            sqlite3.Error: the database could not be written.
        """
        return self._write(
            "UPDATE users SET password_hash = ? WHERE name = ?",
            (password_hash, user_key(username)),
        )

    def get_password_hash(self, username: str) -> str | None:
        """Return the user's hash, or None (no such user, no password, invalid name)."""
        try:
            key = user_key(username)
        except ValueError:
            return None
        with self._lock:
            self._refresh()
            return self._users.get(key)

    # -- rewrite table ---------------------------------------------------------

    def add_mapping(self, mapping: Mapping) -> bool:
        """Add a mapping (already normalized); returns False if it was there.

        Raises:
            sqlite3.Error: the database could not be written.
        """
        return self._write(
            "INSERT OR IGNORE INTO rewrites (kind, source, target) VALUES (?, ?, ?)",
            (mapping.kind.value, mapping.source, mapping.target),
        )

    def remove_mapping(self, mapping: Mapping) -> bool:
        """Remove a mapping; returns False if it was not there.

        Raises:
            sqlite3.Error: the database could not be written.
        """
        return self._write(
            "DELETE FROM rewrites WHERE kind = ? AND source = ? AND target = ?",
            (mapping.kind.value, mapping.source, mapping.target),
        )

    def list_mappings(self) -> list[Mapping]:
        """Every mapping, sorted by source, kind, target."""
        return list(self.rewrite_table().mappings)

    def rewrite_table(self) -> RewriteTable:
        """The rows as one immutable snapshot; rebuilt only when they change."""
        with self._lock:
            self._refresh()
            return self._table
