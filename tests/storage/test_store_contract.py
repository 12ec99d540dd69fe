"""One contract for every DomainStore/UserStore: the in-memory fake and SQLite."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.storage import (
    SCHEMA_VERSION,
    DomainStore,
    InvalidName,
    MemoryStore,
    RewriteStore,
    SchemaVersionError,
    SqliteStore,
    UserStore,
)


class Store(DomainStore, UserStore, RewriteStore):  # what both implementations are
    pass


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()  # type: ignore[misc]
    else:
        s = SqliteStore(tmp_path / "kittiwake.db")
        yield s  # type: ignore[misc]
        s.close()


# -- domains ------------------------------------------------------------------


def test_domain_add_remove_list(store: Store) -> None:
    assert store.list_domains() == []
    assert store.add_domain("example.test") is True
    assert store.add_domain("example.test") is False
    assert store.add_domain("b.test") is True
    assert store.list_domains() == ["b.test", "example.test"]
    assert store.contains_domain("example.test")
    assert store.remove_domain("example.test") is True
    assert store.remove_domain("example.test") is False
    assert not store.contains_domain("example.test")
    assert store.list_domains() == ["b.test"]


@pytest.mark.parametrize(
    "given, stored",
    [
        ("Example.TEST", "example.test"),
        ("bücher.test", "xn--bcher-kva.test"),
        ("BÜCHER.test", "xn--bcher-kva.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    ],
)
def test_domain_canonical_form(store: Store, given: str, stored: str) -> None:
    store.add_domain(given)
    assert store.list_domains() == [stored]
    # Found in every spelling, and not added twice.
    assert store.contains_domain(stored)
    assert store.contains_domain(given)
    assert store.add_domain(stored) is False


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "[127.0.0.1]",
        "a/b.test",
        ".hidden.test",
        "a..b.test",
        "trailing.test.",
        "nul\0.test",
        "..",
        ".",
        "tab\t.test",
        "back\\slash.test",
        "x" * 256,
    ],
)
def test_domain_invalid(store: Store, bad: str) -> None:
    with pytest.raises(InvalidName):
        store.add_domain(bad)
    assert store.contains_domain(bad) is False
    assert store.list_domains() == []


# -- users ----------------------------------------------------------------------


def test_user_add_remove_list(store: Store) -> None:
    assert store.list_users() == []
    assert store.add_user("alice@example.test", "h1") is True
    assert store.add_user("alice@example.test", "other") is False
    assert store.get_password_hash("alice@example.test") == "h1"  # unchanged by the 2nd add
    assert store.add_user("bob@example.test", None) is True
    assert store.list_users() == ["alice@example.test", "bob@example.test"]
    assert store.contains_user("bob@example.test")
    assert store.get_password_hash("bob@example.test") is None
    assert store.remove_user("alice@example.test") is True
    assert store.remove_user("alice@example.test") is False
    assert not store.contains_user("alice@example.test")
    assert store.list_users() == ["bob@example.test"]


def test_password_hash(store: Store) -> None:
    assert store.set_password_hash("nobody@example.test", "h") is False
    store.add_user("alice@example.test", None)
    assert store.set_password_hash("ALICE@example.test", "h2") is True
    assert store.get_password_hash("alice@EXAMPLE.test") == "h2"
    assert store.get_password_hash("nobody@example.test") is None
    assert store.get_password_hash("not an address") is None


@pytest.mark.parametrize(
    "given, stored",
    [
        ("Alice@Example.TEST", "alice@example.test"),
        ("jörg@bücher.test", "jörg@xn--bcher-kva.test"),
        ('"a b"@example.test', '"a b"@example.test'),
    ],
)
def test_user_canonical_form(store: Store, given: str, stored: str) -> None:
    store.add_user(given, "h")
    assert store.list_users() == [stored]
    assert store.contains_user(stored)
    assert store.contains_user(given)
    assert store.add_user(stored, "h") is False


@pytest.mark.parametrize(
    "bad",
    [
        "alice",  # no domain
        "@example.test",
        "a/b@example.test",
        ".alice@example.test",
        ".@example.test",
        "..@example.test",
        "al\0ice@example.test",
        "alice@a/b.test",
        "alice@.example.test",
        "alice@example..test",
        "alice@[127.0.0.1]",
        "x" * 250 + "@example.test",  # > 255 characters
    ],
)
def test_user_invalid(store: Store, bad: str) -> None:
    with pytest.raises(InvalidName):
        store.add_user(bad, "h")
    assert store.contains_user(bad) is False
    assert store.list_users() == []


def test_user_name_at_limit(store: Store) -> None:
    name = "x" * (255 - len("@example.test")) + "@example.test"
    assert len(name) == 255
    assert store.add_user(name, None)
    with pytest.raises(InvalidName):
        store.add_user("y" + name, None)


# -- SQLite only ------------------------------------------------------------------


def test_sqlite_file_mode_wal_and_version(tmp_path: Path) -> None:
    path = tmp_path / "data" / "kittiwake.db"
    with SqliteStore(path) as s:
        s.add_domain("example.test")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for side in ("-wal", "-shm"):
            side_path = path.with_name(path.name + side)
            assert stat.S_IMODE(side_path.stat().st_mode) == 0o600, side
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_sqlite_persists(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    with SqliteStore(path) as s:
        s.add_domain("example.test")
        s.add_user("alice@example.test", "h")
    with SqliteStore(path) as s:
        assert s.list_domains() == ["example.test"]
        assert s.get_password_hash("alice@example.test") == "h"


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match="newer"):
        SqliteStore(path)


def test_sqlite_sees_other_connection_changes(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    with SqliteStore(path) as server, SqliteStore(path) as cli:
        assert not server.contains_domain("example.test")  # the copy is loaded now
        cli.add_domain("example.test")
        cli.add_user("alice@example.test", "h")
        assert server.contains_domain("example.test")
        assert server.contains_user("alice@example.test")
        cli.set_password_hash("alice@example.test", "h2")
        assert server.get_password_hash("alice@example.test") == "h2"
        cli.remove_user("alice@example.test")
        cli.remove_domain("example.test")
        assert not server.contains_user("alice@example.test")
        assert server.list_domains() == []


def test_sqlite_sees_other_process_changes(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    with SqliteStore(path) as server:
        assert not server.contains_domain("example.test")
        code = textwrap.dedent(
            f"""
            from pathlib import Path
            from kittiwake.storage import SqliteStore
            with SqliteStore(Path({str(path)!r})) as s:
                s.add_domain("example.test")
                s.add_user("alice@example.test", None)
            """
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        assert server.contains_domain("example.test")
        assert server.contains_user("alice@example.test")


def test_sqlite_refresh_interval_trusts_copy(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    with SqliteStore(path, refresh_interval=0.2) as server, SqliteStore(path) as cli:
        assert not server.contains_domain("example.test")
        cli.add_domain("example.test")
        deadline = time.monotonic() + 5
        while not server.contains_domain("example.test"):
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_sqlite_lookup_cost(tmp_path: Path) -> None:
    """The figure quoted in sqlite.py: a lookup stays a few microseconds while it
    checks PRAGMA data_version on every call (generous bound for loaded CI)."""
    with SqliteStore(tmp_path / "kittiwake.db") as s:
        s.add_domain("example.test")
        s.add_user("alice@example.test", None)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            s.contains_user("alice@example.test")
        per_call = (time.perf_counter() - t0) / n
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per lookup"
    if os.environ.get("KW_SHOW_TIMINGS"):
        print(f"contains_user: {per_call * 1e6:.1f} µs")


# -- the rewrite table (aliases, issue 5) ---------------------------------------


def test_mappings_add_remove_list(store: Store) -> None:
    from kittiwake.policy.rewrite import MappingKind, expand, normalize_mapping

    sales = normalize_mapping(MappingKind.ADDRESS, "Sales@A.test", "alice@a.test")
    alias = normalize_mapping(MappingKind.DOMAIN, "@alias.test", "@a.test")
    assert not store.rewrite_table()
    assert store.add_mapping(sales) is True
    assert store.add_mapping(sales) is False
    assert store.add_mapping(alias) is True
    assert store.list_mappings() == [alias, sales]
    table = store.rewrite_table()
    assert store.rewrite_table() is table  # one snapshot until something changes
    assert expand("sales@alias.test", table).addresses == ("alice@a.test",)
    assert store.remove_mapping(sales) is True
    assert store.remove_mapping(sales) is False
    assert store.list_mappings() == [alias]
    assert store.rewrite_table() is not table


def test_sqlite_mappings_seen_by_another_connection(tmp_path: Path) -> None:
    from kittiwake.policy.rewrite import MappingKind, normalize_mapping

    reader = SqliteStore(tmp_path / "kittiwake.db")
    assert not reader.rewrite_table()
    with SqliteStore(tmp_path / "kittiwake.db") as writer:
        writer.add_mapping(normalize_mapping(MappingKind.FORWARD, "a@a.test", "b@b.test"))
    assert reader.rewrite_table().has_mapping("a@a.test")
    reader.close()


def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "kittiwake.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE domains (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID")
    raw.execute(
        "CREATE TABLE users (name TEXT PRIMARY KEY NOT NULL, password_hash TEXT) WITHOUT ROWID"
    )
    raw.execute("INSERT INTO users VALUES ('alice@a.test', 'h')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with SqliteStore(path) as store:
        assert store.get_password_hash("alice@a.test") == "h"
        assert store.list_mappings() == []
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    raw.close()
