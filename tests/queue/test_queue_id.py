"""Queue IDs: fixed width, file-name safe, sorted by time, unique per slot."""

from __future__ import annotations

import re

import pytest

from kittiwake.queue._qid import (
    EPOCH_MS,
    QueueIdAllocator,
    is_queue_id,
    queue_id_slot,
    queue_id_time,
)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_shape_and_fields() -> None:
    clock = Clock(1_750_000_000.123)
    alloc = QueueIdAllocator(0x2A, clock=clock)
    qid = alloc.next()
    assert re.fullmatch(r"[0-9A-Z]{12}", qid)
    assert is_queue_id(qid)
    assert queue_id_slot(qid) == 0x2A
    assert queue_id_time(qid) == pytest.approx(1_750_000_000.123, abs=0.001)


def test_sorted_by_time_and_unique() -> None:
    clock = Clock(1_750_000_000.0)
    alloc = QueueIdAllocator(3, clock=clock)
    ids = []
    for step in range(3000):  # > 1024 in one millisecond: the counter borrows ahead
        if step % 1500 == 0:
            clock.t += 0.5
        ids.append(alloc.next())
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_clock_set_back_never_repeats() -> None:
    clock = Clock(1_750_000_000.0)
    alloc = QueueIdAllocator(1, clock=clock)
    first = [alloc.next() for _ in range(10)]
    clock.t -= 3600
    later = [alloc.next() for _ in range(10)]
    assert min(later) > max(first)


def test_floor_from_previous_owner() -> None:
    old = QueueIdAllocator(1, clock=Clock(1_750_000_100.0))
    issued = old.next()
    # A restart with the clock an hour behind, starting from the saved floor.
    new = QueueIdAllocator(1, floor_ms=old.high_water_ms, clock=Clock(1_749_996_500.0))
    assert new.next() > issued


def test_slots_differ() -> None:
    clock = Clock(1_750_000_000.0)
    a = QueueIdAllocator(0, clock=clock).next()
    b = QueueIdAllocator(1, clock=clock).next()
    assert a != b


@pytest.mark.parametrize(
    "bad", ["", "0123456789A", "0123456789ABC", "0123456789AI", "abcdefghjkmn"]
)
def test_not_queue_ids(bad: str) -> None:
    assert not is_queue_id(bad)
    with pytest.raises(ValueError):
        queue_id_time(bad)


def test_epoch_is_2024() -> None:
    assert EPOCH_MS == 1_704_067_200_000
    with pytest.raises(ValueError):
        QueueIdAllocator(256)
