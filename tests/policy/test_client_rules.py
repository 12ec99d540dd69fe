"""The pure rules behind the client stores: greylisting's lifecycle and the sliding
window (the stores apply them in one transaction: tests/storage)."""

from __future__ import annotations

import pytest

from kittiwake.policy.greylist import GreylistEntry, GreylistTimes, GreylistVerdict, greylist_step
from kittiwake.policy.ratelimit import WindowLimit, admits, window_of

TIMES = GreylistTimes(temp_block=10.0, whitelist_life=1000.0, unseen_life=100.0)
V = GreylistVerdict


@pytest.mark.parametrize(
    "entry, now, verdict, stored",
    [
        (None, 50.0, V.GREYLISTED, GreylistEntry(50.0, 50.0, 0)),
        (GreylistEntry(0.0, 0.0, 0), 9.0, V.TOO_SOON, None),  # before temp_block
        (GreylistEntry(0.0, 0.0, 0), 10.0, V.PASS, GreylistEntry(0.0, 10.0, 1)),
        (GreylistEntry(0.0, 0.0, 0), 100.0, V.PASS, GreylistEntry(0.0, 100.0, 1)),
        (GreylistEntry(0.0, 0.0, 0), 101.0, V.GREYLISTED, GreylistEntry(101.0, 101.0, 0)),
        (GreylistEntry(0.0, 500.0, 3), 1500.0, V.PASS, GreylistEntry(0.0, 1500.0, 4)),
        (GreylistEntry(0.0, 500.0, 3), 1501.0, V.GREYLISTED, GreylistEntry(1501.0, 1501.0, 0)),
    ],
)
def test_greylist_step(
    entry: GreylistEntry | None, now: float, verdict: GreylistVerdict, stored: GreylistEntry | None
) -> None:
    assert greylist_step(entry, now, TIMES) == (verdict, stored)


def test_sliding_window() -> None:
    limit = WindowLimit("k", 2, 60.0)
    assert window_of(120.0, 60.0) == 2 and window_of(179.9, 60.0) == 2
    assert admits(limit, 0, 1, 120.0)
    assert not admits(limit, 0, 2, 120.0)
    assert not admits(limit, 2, 0, 120.0)  # the whole previous window still counts
    assert admits(limit, 2, 0, 150.0)  # half of it: 1 + 1 <= 2
    assert not admits(limit, 2, 1, 150.0)
