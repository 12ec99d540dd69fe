"""The AuthFailureStore contract (the per-IP AUTH failure budget), run against every
implementation, and what the SQLite one adds: sharing between processes, the file
under DATA and its mode, and files written by earlier versions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kittiwake.policy.ratelimit import over_budget
from kittiwake.storage import AuthFailureStore, SqliteAuthFailureStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: opens a store on the test's storage with the given clock (every call: another
#: handle on the same data, as another worker process would have)
Opener = Callable[[Clock], AuthFailureStore]


@pytest.fixture(params=["sqlite"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[AuthFailureStore] = []

    def open_store(clock: Clock) -> AuthFailureStore:
        store = SqliteAuthFailureStore(tmp_path / "auth-failures.db", clock=clock)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_over_budget() -> None:
    assert not over_budget(9, 10)
    assert over_budget(10, 10)
    assert not over_budget(1000, 0)  # 0: no budget


def test_ten_failures_in_ten_minutes_block_for_ten_minutes(opener: Opener) -> None:
    clock = Clock()
    budget = opener(clock)
    for _ in range(9):
        assert not budget.record_failure("192.0.2.1", limit=10, window=600)
        clock.now += 60  # nine failures over nine minutes
    assert not budget.blocked("192.0.2.1")
    assert budget.record_failure("192.0.2.1", limit=10, window=600)
    assert budget.blocked("192.0.2.1")
    assert not budget.blocked("192.0.2.2")  # per address
    clock.now += 599
    assert budget.blocked("192.0.2.1")
    clock.now += 2
    assert not budget.blocked("192.0.2.1")
    # the slate is clean afterwards: one failure does not block again
    assert not budget.record_failure("192.0.2.1", limit=10, window=600)


def test_old_failures_fall_out_of_the_window(opener: Opener) -> None:
    clock = Clock()
    budget = opener(clock)
    for _ in range(20):
        assert not budget.record_failure("192.0.2.1", limit=10, window=600)
        clock.now += 70  # never ten within ten minutes
    assert not budget.blocked("192.0.2.1")


def test_no_budget_never_blocks(opener: Opener) -> None:
    budget = opener(Clock())
    for _ in range(50):
        assert not budget.record_failure("192.0.2.1", limit=0, window=600)
    assert not budget.blocked("192.0.2.1")


def test_handles_on_the_same_data_share_the_counts(opener: Opener) -> None:
    clock = Clock()
    first, second = opener(clock), opener(clock)
    for _ in range(2):
        assert not first.record_failure("198.51.100.7", limit=3, window=600)
    assert second.record_failure("198.51.100.7", limit=3, window=600)
    assert first.blocked("198.51.100.7")


# -- the SQLite implementation -------------------------------------------------


def test_shared_between_processes(tmp_path: Path) -> None:
    db = tmp_path / "auth-failures.db"
    code = (
        "import sys; from pathlib import Path\n"
        "from kittiwake.storage import SqliteAuthFailureStore\n"
        "b = SqliteAuthFailureStore(Path(sys.argv[1]))\n"
        "for _ in range(5): b.record_failure('198.51.100.7', limit=10, window=600)\n"
    )
    for _ in range(2):  # two "workers", five failures each
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    budget = SqliteAuthFailureStore(db)
    assert budget.blocked("198.51.100.7")
    budget.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_reads_a_file_an_earlier_version_wrote(tmp_path: Path) -> None:
    """A DATA directory from before the stores moved into storage/ keeps working: the
    tables the old ``auth/failures.py`` created, with a block in them."""
    db = tmp_path / "auth-failures.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE failures (ip TEXT NOT NULL, at REAL NOT NULL)")
        conn.execute(
            "CREATE TABLE blocks (ip TEXT PRIMARY KEY NOT NULL, until REAL NOT NULL) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO blocks VALUES ('192.0.2.9', 2000.0)")
        conn.executemany("INSERT INTO failures VALUES ('192.0.2.8', ?)", [(990.0,), (995.0,)])
    conn.close()
    clock = Clock()
    store = SqliteAuthFailureStore(db, clock=clock)
    try:
        assert store.blocked("192.0.2.9")
        # the two failures already there count: the third of three blocks
        assert store.record_failure("192.0.2.8", limit=3, window=600)
        clock.now = 2001.0
        assert not store.blocked("192.0.2.9")
    finally:
        store.close()
