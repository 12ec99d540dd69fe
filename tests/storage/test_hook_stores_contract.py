"""The contracts of GreylistStore, RateLimitStore and SpamTrapStore (what the handlers
that remember keep), run against every implementation; then what the SQLite one adds:
its files under DATA, their mode, sharing between processes, and files written by
earlier versions (a DATA directory keeps working)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kittiwake.policy.greylist import GreylistTimes, GreylistVerdict, Triplet
from kittiwake.policy.ratelimit import WindowLimit
from kittiwake.storage import (
    GreylistStore,
    HookStores,
    RateLimitStore,
    SpamTrapStore,
    SqliteHookStores,
)

_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


class Stores:
    """Opens stores on one test's storage; every call is another handle on the same
    data (as another worker process has); all are closed at the end."""

    def __init__(self, factory: HookStores) -> None:
        self.factory = factory
        self.opened: list[GreylistStore | RateLimitStore | SpamTrapStore] = []

    def greylist(self) -> GreylistStore:
        store = self.factory.greylist()
        self.opened.append(store)
        return store

    def rate_limits(self) -> RateLimitStore:
        store = self.factory.rate_limits()
        self.opened.append(store)
        return store

    def spam_traps(self) -> SpamTrapStore:
        store = self.factory.spam_traps()
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    s = Stores(SqliteHookStores(tmp_path))
    yield s
    for store in s.opened:
        store.close()


# -- GreylistStore ---------------------------------------------------------------

TIMES = GreylistTimes(temp_block=10.0, whitelist_life=1000.0, unseen_life=100.0)
T1 = Triplet("192.0.2.0/24", "s@remote.test", "alice@local.test")
T0 = 1_000_000.0
PASS, GREY, SOON = GreylistVerdict.PASS, GreylistVerdict.GREYLISTED, GreylistVerdict.TOO_SOON


def test_greylist_lifecycle(stores: Stores) -> None:
    grey = stores.greylist()

    async def go() -> list[GreylistVerdict]:
        return [
            await grey.check(T1, T0, TIMES),  # new: refused, remembered
            await grey.check(T1, T0 + 5, TIMES),  # before temp_block
            await grey.check(T1, T0 + 11, TIMES),  # after: passes, whitelisted
            await grey.check(T1, T0 + 12, TIMES),
            await grey.check(T1, T0 + 12 + 999, TIMES),  # seen within whitelist_life
            await grey.check(T1, T0 + 12 + 999 + 1001, TIMES),  # not: forgotten
        ]

    assert run(go()) == [GREY, SOON, PASS, PASS, PASS, GREY]


def test_greylist_triplets_apart_and_unseen_forgotten(stores: Stores) -> None:
    grey = stores.greylist()
    others = [
        Triplet("198.51.100.0/24", T1.sender, T1.recipient),
        Triplet(T1.network, "", T1.recipient),
        Triplet(T1.network, T1.sender, "bob@local.test"),
    ]

    async def go() -> None:
        assert await grey.check(T1, T0, TIMES) is GREY
        for other in others:  # each is a triplet of its own
            assert await grey.check(other, T0 + 1, TIMES) is GREY
        assert await grey.check(T1, T0 + 11, TIMES) is PASS
        # never retried within unseen_life: greylisted afresh, from that moment
        assert await grey.check(others[0], T0 + 200, TIMES) is GREY
        assert await grey.check(others[0], T0 + 205, TIMES) is SOON
        assert await grey.check(others[0], T0 + 211, TIMES) is PASS

    run(go())


def test_greylist_shared_between_handles(stores: Stores) -> None:
    first, second = stores.greylist(), stores.greylist()

    async def go() -> None:
        assert await first.check(T1, T0, TIMES) is GREY
        assert await second.check(T1, T0 + 1, TIMES) is SOON
        assert await second.check(T1, T0 + 20, TIMES) is PASS
        assert await first.check(T1, T0 + 21, TIMES) is PASS

    run(go())


# -- RateLimitStore --------------------------------------------------------------

W0 = 3600.0 * 1000  # the start of a fixed window


def test_rate_limit_counts_up_to_the_limit(stores: Stores) -> None:
    rl = stores.rate_limits()
    limit = WindowLimit("smtp/messagesPerHour:192.0.2.1", 3, 3600.0)
    other = WindowLimit("smtp/messagesPerHour:192.0.2.2", 3, 3600.0)

    async def go() -> None:
        for _ in range(3):
            assert await rl.take([limit], W0 + 1) is None
        assert await rl.take([limit], W0 + 2) == limit
        assert await rl.take([limit], W0 + 3) == limit  # refused events are not counted
        assert await rl.take([other], W0 + 3) is None  # keys are apart

    run(go())


def test_rate_limit_all_or_none(stores: Stores) -> None:
    rl = stores.rate_limits()
    client = WindowLimit("messagesPerHour:192.0.2.1", 2, 3600.0)
    user = WindowLimit("messagesPerHourPerUser:alice@local.test", 1, 3600.0)

    async def go() -> None:
        assert await rl.take([client, user], W0) is None
        assert await rl.take([client, user], W0) == user  # the first one over
        # the client's count did not move when the user's limit refused the event
        assert await rl.take([client], W0) is None
        assert await rl.take([client], W0) == client

    run(go())


def test_rate_limit_window_slides(stores: Stores) -> None:
    rl = stores.rate_limits()
    limit = WindowLimit("connectionsPerMinute:192.0.2.1", 2, 60.0)

    async def go() -> None:
        assert await rl.take([limit], W0) is None
        assert await rl.take([limit], W0) is None
        assert await rl.take([limit], W0) == limit
        # half-way through the next window, half of the previous one still counts
        assert await rl.take([limit], W0 + 90) is None  # 2 * 0.5 + 0 + 1 <= 2
        assert await rl.take([limit], W0 + 90) == limit  # 2 * 0.5 + 1 + 1 > 2
        assert await rl.take([limit], W0 + 150) is None  # the full window has gone by

    run(go())


def test_rate_limit_shared_between_handles(stores: Stores) -> None:
    first, second = stores.rate_limits(), stores.rate_limits()
    limit = WindowLimit("recipientsPerHour:192.0.2.1", 2, 3600.0)

    async def go() -> None:
        assert await first.take([limit], W0) is None
        assert await second.take([limit], W0) is None
        assert await first.take([limit], W0) == limit

    run(go())


# -- SpamTrapStore ---------------------------------------------------------------


def test_spam_trap_block_lifecycle(stores: Stores) -> None:
    traps = stores.spam_traps()

    async def go() -> None:
        assert not await traps.check("smtp/192.0.2.7", T0)
        assert await traps.check("smtp/192.0.2.7", T0, T0 + 100)  # wrote to a trap
        assert await traps.check("smtp/192.0.2.7", T0 + 99)
        assert not await traps.check("smtp/192.0.2.8", T0 + 99)  # per client
        assert not await traps.check("smtp/192.0.2.7", T0 + 101)  # the block is over
        # a trap again, while blocked: still blocked (the block is not shortened)
        assert await traps.check("smtp/192.0.2.7", T0 + 200, T0 + 300)
        assert await traps.check("smtp/192.0.2.7", T0 + 250, T0 + 260)
        assert await traps.check("smtp/192.0.2.7", T0 + 299)

    run(go())


def test_spam_trap_shared_between_handles(stores: Stores) -> None:
    first, second = stores.spam_traps(), stores.spam_traps()

    async def go() -> None:
        assert await first.check("smtp/192.0.2.7", T0, T0 + 100)
        assert await second.check("smtp/192.0.2.7", T0 + 1)
        assert not await second.check("submission/192.0.2.7", T0 + 1)

    run(go())


# -- the SQLite implementation ---------------------------------------------------


def test_sqlite_files_under_data_are_private(tmp_path: Path) -> None:
    """The files and their names are those earlier versions used (DATA keeps working)."""
    factory = SqliteHookStores(tmp_path / "data")
    opened = [factory.greylist(), factory.rate_limits(), factory.spam_traps()]
    for store in opened:
        store.close()
    for name in ("greylist.db", "ratelimit.db", "spamtrap.db"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


def test_sqlite_reads_files_an_earlier_version_wrote(tmp_path: Path) -> None:
    """Rows as the handlers wrote them before the stores moved into storage/."""
    with sqlite3.connect(tmp_path / "greylist.db") as conn:
        conn.execute(
            "CREATE TABLE greylist (network TEXT NOT NULL, sender TEXT NOT NULL,"
            " recipient TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
            " passed INTEGER NOT NULL, PRIMARY KEY (network, sender, recipient)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO greylist VALUES (?, ?, ?, ?, ?, 3)", (*T1, T0 - 50, T0 - 40))
    conn.close()
    with sqlite3.connect(tmp_path / "ratelimit.db") as conn:
        conn.execute(
            "CREATE TABLE counters (key TEXT NOT NULL, slot INTEGER NOT NULL,"
            " count INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, slot))"
            " WITHOUT ROWID"
        )
        slot = int(W0 // 3600.0)
        conn.execute(
            "INSERT INTO counters VALUES ('smtp/messagesPerHour:192.0.2.1', ?, 2, ?)",
            (slot, (slot + 2) * 3600.0),
        )
    conn.close()
    with sqlite3.connect(tmp_path / "spamtrap.db") as conn:
        conn.execute(
            "CREATE TABLE blocked (client TEXT PRIMARY KEY NOT NULL, until REAL NOT NULL)"
            " WITHOUT ROWID"
        )
        conn.execute("INSERT INTO blocked VALUES ('smtp/192.0.2.7', ?)", (T0 + 100,))
    conn.close()

    factory = SqliteHookStores(tmp_path)
    grey, rl, traps = factory.greylist(), factory.rate_limits(), factory.spam_traps()
    limit = WindowLimit("smtp/messagesPerHour:192.0.2.1", 3, 3600.0)

    async def go() -> None:
        assert await grey.check(T1, T0, TIMES) is PASS  # whitelisted before
        assert await rl.take([limit], W0 + 1) is None  # 2 counted before, the third
        assert await rl.take([limit], W0 + 2) == limit
        assert await traps.check("smtp/192.0.2.7", T0)

    try:
        run(go())
    finally:
        for store in (grey, rl, traps):
            store.close()


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from kittiwake.policy.greylist import GreylistTimes, Triplet
    from kittiwake.policy.ratelimit import WindowLimit
    from kittiwake.storage import SqliteHookStores

    async def main():
        factory = SqliteHookStores(Path(sys.argv[1]))
        rl, grey = factory.rate_limits(), factory.greylist()
        limit = WindowLimit("messagesPerHour:192.0.2.1", 25, 3600.0)
        taken = sum([await rl.take([limit], 3600.0 * 1000) is None for _ in range(40)])
        times = GreylistTimes(10.0, 1000.0, 100.0)
        verdict = await grey.check(Triplet("192.0.2.0/24", "", "a@b.test"), 1000.0, times)
        rl.close()
        grey.close()
        print(taken, verdict.name)

    asyncio.run(main())
    """
)


def test_sqlite_shared_between_processes(tmp_path: Path) -> None:
    """Four processes, as four workers would, share one limit and one greylist."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    taken, verdicts = 0, []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        count, verdict = out.split()
        taken += int(count)
        verdicts.append(verdict)
    assert taken == 25
    # the first to see the triplet greylisted it; the others were too soon
    assert sorted(verdicts) == ["GREYLISTED", "TOO_SOON", "TOO_SOON", "TOO_SOON"]
