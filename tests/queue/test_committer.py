"""Group commit's gathering: a flush waits briefly for commits on their way, never for
a message that is alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kittiwake.queue._committer import GroupCommitter


def _committer(
    gather: Callable[[], int] | None, delay: float, size: int = 4
) -> tuple[GroupCommitter[str], list[list[str]]]:
    batches: list[list[str]] = []
    committer: GroupCommitter[str] = GroupCommitter(
        1,
        prepare=lambda payload: None,
        flush=lambda batch: batches.append(list(batch)),
        abandon=lambda payload: None,
        on_committed=lambda: None,
        inline_prepare=True,
        gather=gather,
        gather_delay=delay,
        gather_size=size,
    )
    return committer, batches


def test_a_flush_waits_for_commits_on_their_way() -> None:
    committer, batches = _committer(lambda: 1, 1.0)

    async def go() -> None:
        first = asyncio.ensure_future(committer.commit("a"))
        await asyncio.sleep(0.05)  # "b" comes while the flush for "a" waits
        await asyncio.gather(first, committer.commit("b"))

    try:
        asyncio.run(go())
    finally:
        committer.shutdown()
    assert batches == [["a", "b"]]


def test_a_message_alone_is_flushed_at_once() -> None:
    # nothing else is being received: no wait, though the delay is long
    committer, batches = _committer(lambda: 0, 60.0)
    t0 = time.monotonic()
    try:
        asyncio.run(committer.commit("a"))
    finally:
        committer.shutdown()
    assert time.monotonic() - t0 < 30
    assert batches == [["a"]]


def test_a_batch_of_gather_size_is_flushed_at_once() -> None:
    committer, batches = _committer(lambda: 5, 60.0, size=1)
    t0 = time.monotonic()
    try:
        asyncio.run(committer.commit("a"))
    finally:
        committer.shutdown()
    assert time.monotonic() - t0 < 30
    assert batches == [["a"]]


def test_without_gather_a_flush_never_waits() -> None:
    committer, batches = _committer(None, 60.0)
    t0 = time.monotonic()
    try:
        asyncio.run(committer.commit("a"))
    finally:
        committer.shutdown()
    assert time.monotonic() - t0 < 30
    assert batches == [["a"]]
