"""Spool slots: one directory per process that writes to the spool, held under ``flock``.

``DATA/spool/NN/`` (NN = the slot number, two hex digits, the same number that is in
every queue ID the slot issues) holds:

``lock``
    held with ``flock(LOCK_EX)`` for as long as a process owns the slot; it also keeps
    the slot's queue-ID clock floor (ASCII milliseconds), see :mod:`._qid`.
``log.NNNNNNNN``
    append-only segments of envelope records (:mod:`._envelope`), group-committed.
``<QUEUEID>``
    message data, exactly the bytes a mailbox receives. A message is in the spool iff
    its data file exists *and* a log record for it does. A data file without a record
    is a message whose commit never finished (no 250 was sent): garbage.

A slot has at most one owner. The kernel drops the ``flock`` when its owner dies
(SIGKILL included), so "can I lock it?" is exactly "is its owner gone?"; the process
that locks a dead slot recovers it: it drops the garbage and takes over the pending
entries. Two processes can therefore never work on the same entry at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field

from kittiwake.queue._envelope import Envelope, iter_records
from kittiwake.queue._qid import MAX_SLOTS, is_queue_id, queue_id_time
from kittiwake.queue._reuse import FREE_PREFIX

__all__ = ["SlotState", "lock_slot", "recover_slot", "release_slot", "slot_dir_name"]

log = logging.getLogger("kittiwake.queue")

LOCK_NAME = "lock"
SEGMENT_PREFIX = "log."


def slot_dir_name(slot: int) -> str:
    """The directory name of ``slot`` (two upper-case hex digits)."""
    return f"{slot:02X}"


def parse_slot_dir_name(name: str) -> int | None:
    """The slot number a directory name stands for, or None."""
    if len(name) != 2 or name.upper() != name:
        return None
    try:
        slot = int(name, 16)
    except ValueError:
        return None
    return slot if 0 <= slot < MAX_SLOTS else None


def segment_name(number: int) -> str:
    """The file name of log segment ``number``."""
    return f"{SEGMENT_PREFIX}{number:08d}"


def lock_slot(root: str, slot: int, *, create: bool) -> int | None:
    """Try to take ``slot`` under ``root``; return the locked lock-file descriptor or None.

    Args:
        root: the spool directory.
        slot: 0-255.
        create: make the slot directory if it does not exist (False when only looking
            for orphans to adopt).

    Returns:
        The descriptor, holding ``flock(LOCK_EX)``; None if another process holds it
        (or the slot vanished meanwhile).

    Raises:
        OSError: the directory or lock file cannot be created or opened.
    """
    path = os.path.join(root, slot_dir_name(slot))
    lock_path = os.path.join(path, LOCK_NAME)
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # released and removed between listdir/makedirs and open
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Lock files are never removed by kittiwake, but an operator may clean up a
        # spool by hand: if the file went away between our open and our flock, we
        # would hold a lock nobody else sees.
        st = os.fstat(fd)
        current = os.stat(lock_path)
        if (st.st_ino, st.st_dev) != (current.st_ino, current.st_dev):
            os.close(fd)
            return None
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_floor(lock_fd: int) -> int:
    """The queue-ID clock floor (Unix ms) saved in a lock file; 0 if none."""
    raw = os.pread(lock_fd, 32, 0)
    try:
        return int(raw.split(b"\n", 1)[0] or b"0")
    except ValueError:
        return 0


def save_floor(lock_fd: int, floor_ms: int) -> None:
    """Save the queue-ID clock floor (fixed width, so a shorter value never leaves a tail)."""
    os.pwrite(lock_fd, b"%020d\n" % floor_ms, 0)


@dataclass
class SlotState:
    """The bookkeeping of one locked slot. Mutated under the spool's state lock."""

    number: int
    path: str
    lock_fd: int
    #: True for the slot this process writes new messages into
    primary: bool
    #: pending queue ID -> segment number holding its record
    where: dict[str, int] = field(default_factory=dict)
    #: pending queue ID -> its raw record (re-appended when an old segment is compacted)
    records: dict[str, bytes] = field(default_factory=dict)
    #: segment number -> pending entries whose record is in it
    counts: dict[int, int] = field(default_factory=dict)
    #: the segment being appended to (primary only); -1 = none open yet
    current: int = -1
    #: the highest segment number that exists or existed in this slot
    last_segment: int = 0
    #: queue-ID clock floor (Unix ms) derived from what the slot holds
    floor_ms: int = 0

    def segment_path(self, number: int) -> str:
        return os.path.join(self.path, segment_name(number))


def recover_slot(state: SlotState) -> list[Envelope]:
    """Read a freshly locked slot: drop garbage, return its pending envelopes.

    Only call this while holding the slot's lock and before anything new is written
    to it: every data file without a record is then certainly garbage.

    Args:
        state: an empty :class:`SlotState`; filled in with the pending entries.

    Returns:
        The envelopes of the messages still to deliver, oldest first.

    Raises:
        OSError: the slot directory cannot be read.
    """
    names = os.listdir(state.path)
    segments = sorted(
        int(n[len(SEGMENT_PREFIX) :])
        for n in names
        if n.startswith(SEGMENT_PREFIX) and n[len(SEGMENT_PREFIX) :].isdigit()
    )
    data = {n for n in names if is_queue_id(n)}
    for name in names:
        if name.startswith(FREE_PREFIX):  # a dead process's kept files (see _reuse)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state.path, name))
    found: dict[str, tuple[int, bytes, Envelope]] = {}
    for number in segments:
        with open(state.segment_path(number), "rb") as f:
            content = f.read()
        torn = 0
        for env, raw in iter_records(content):
            if env is None:
                torn += 1
            elif is_queue_id(env.queue_id):
                found[env.queue_id] = (number, raw, env)
        if torn:
            # Expected after a crash or ENOSPC in mid-append: those commits never
            # returned, so no client was told 250 for them.
            log.warning(
                "spool %s: %d torn record(s) in %s skipped", state.path, torn, segment_name(number)
            )
    pending: list[Envelope] = []
    for qid in sorted(data):
        if qid not in found:
            # Written but never committed (or its commit failed): no 250 was sent.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state.path, qid))
            continue
        number, raw, env = found[qid]
        state.where[qid] = number
        state.records[qid] = b"\n" + raw
        state.counts[number] = state.counts.get(number, 0) + 1
        pending.append(env)
    for number in segments:
        if not state.counts.get(number):
            # Every entry in it was delivered (or discarded): nothing left to recover.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state.segment_path(number))
    state.last_segment = segments[-1] if segments else 0
    newest = max((queue_id_time(q) for q in set(found) | data), default=0.0)
    state.floor_ms = max(read_floor(state.lock_fd), int(newest * 1000) + 1)
    return pending


def release_slot(state: SlotState, *, drop_segments: bool) -> None:
    """Give up a slot. Its directory and lock file stay: the lock file keeps the slot's
    queue-ID clock floor for whoever takes the slot number next.

    Args:
        state: the slot.
        drop_segments: also delete its log segments (only when no entry is pending in
            it), so that an idle spool holds no envelope records.
    """
    try:
        if drop_segments:
            for name in os.listdir(state.path):
                if name.startswith(SEGMENT_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(state.path, name))
    finally:
        os.close(state.lock_fd)
