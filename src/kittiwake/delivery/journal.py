"""Kittiwake's own delivery journal: an append-only record, under ``DATA/journal/``, of
what became of every recipient of every message.

Each process appends to its own file (``<UTC start time>-<name>.log``; no two writers
ever share a file, so records cannot interleave), one batch at a time: one ``write`` per
batch, however many records it holds, to a file opened ``O_DSYNC`` (durable when the
write returns). A line is::

    <unix time>\\t<queue id>\\t<recipient index>\\t<status>\\t<recipient>\\t<mailbox>\\t<detail>

with tab, newline, carriage return and backslash escaped in the free-text fields.
The journal is written *after* the mailbox is durable and *before* the spool entry is
removed, so after a crash it tells recovery which recipients are finished, without
scanning Maildirs; it is also the record that bounces will be built from (FAILED).

Files rotate at :attr:`Journal.segment_bytes`. Recovery only reads files modified after
the oldest message it is recovering was received (a record is always written after its
message arrived).

Pruning, at open and at each rotation: a closed file is deleted once it is older than
``keep_days``, and the oldest closed files are deleted while all of them together exceed
``max_bytes`` (the cap is on the directory, every writer's files). Neither may cost
idempotent recovery, so a file is never deleted while

* a writer still has it open: each writer holds ``flock(LOCK_EX)`` on its current file
  (the kernel drops it when the writer dies, SIGKILL included), and the pruner deletes
  only what it can lock; or
* it holds a record of a message still in the spool (its data file ``DATA/spool/NN/<queue
  id>`` exists, whichever process holds it): after a crash that message is delivered
  again, and its records are what keep it from reaching a mailbox twice (``maildir.py``)
  or being forwarded twice (``mailet/enqueue.py``). A message is in the spool until
  after its records are durable (they are written before the data file is unlinked),
  and a queue ID never returns, so a file with none of the spooled IDs is never needed
  again by recovery. If the spool cannot be listed, nothing is pruned.

So the cap can be exceeded while old mail sits in the spool (a message deferred for
longer than it takes to write ``max_bytes``); the files it pins go as soon as it leaves.
James has no such file (its mailet container keeps its state in the mail repositories);
its closest counterpart, the logs, rotate by size and age in the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from kittiwake.delivery.base import Status
from kittiwake.queue._qid import is_queue_id
from kittiwake.queue._slots import parse_slot_dir_name

__all__ = ["Journal", "JournalRecord"]

log = logging.getLogger("kittiwake.delivery")

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_O_JOURNAL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DSYNC
_FINAL = {Status.SENT.value: Status.SENT, Status.FAILED.value: Status.FAILED}
#: slack for clocks that moved between a record's write and its lookup
_CLOCK_SLACK = 300.0


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One recipient's outcome."""

    time: float
    queue_id: str
    index: int
    status: Status
    recipient: str
    #: canonical mailbox, "" if none
    mailbox: str = ""
    detail: str = ""

    def line(self) -> bytes:
        """The record as one journal line (with its newline)."""
        return (
            f"{self.time:.3f}\t{self.queue_id}\t{self.index}\t{self.status.value}\t"
            f"{_clean(self.recipient)}\t{_clean(self.mailbox)}\t{_clean(self.detail)}\n"
        ).encode("utf-8", "surrogateescape")


def _clean(text: str) -> str:
    # Nearly every field is plain; isprintable() (C) is false for tab, CR and LF.
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_ESCAPES)


class Journal:
    """The journal as written by one process (thread-safe)."""

    def __init__(
        self,
        root: Path,
        *,
        spool: Path | None = None,
        name: str | None = None,
        segment_bytes: int = 64 << 20,
        keep_days: float = 7.0,
        max_bytes: int = 1 << 30,
    ) -> None:
        """Open a new journal file under ``root`` (created 0700 if missing).

        Args:
            root: ``DATA/journal``.
            spool: the spool whose messages' records are kept (see the module's
                docstring); default ``root``'s sibling ``spool`` (``DATA/spool``).
            name: this writer's name in file names (default: the process ID).
            segment_bytes: start a new file past this size.
            keep_days: delete files last written longer ago than this.
            max_bytes: delete the oldest files while all together are larger.

        Raises:
            OSError: the directory or file cannot be created.
        """
        self.root = root
        self.spool = spool if spool is not None else root.parent / "spool"
        self.segment_bytes = segment_bytes
        self.keep_days = keep_days
        self.max_bytes = max_bytes
        self._name = name or str(os.getpid())
        self._lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._dirty = False  # a failed append may have left a partial line
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._open_segment()
        self.prune()

    def _open_segment(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for n in range(1000):
            suffix = f".{n}" if n else ""
            path = self.root / f"{stamp}-{self._name}{suffix}.log"
            try:
                # O_DSYNC: an append is durable when its write returns (write and
                # fdatasync in one system call).
                fd = os.open(path, _O_JOURNAL, 0o600)
            except FileExistsError:
                continue
            # held while the file is open (its writer's): the pruner leaves it alone
            fcntl.flock(fd, fcntl.LOCK_EX)
            break
        else:  # pragma: no cover - a thousand rotations within one second
            raise FileExistsError(f"{self.root}: cannot name a new journal file")
        # The file must be findable after a crash before any record in it counts.
        os.fsync(self._dir_fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self._dirty = fd, 0, False
        self.path = path

    def prune(self) -> int:
        """Delete closed files past ``keep_days`` or beyond ``max_bytes``, oldest first,
        except those a message still in the spool needs (see the module's docstring).

        Returns:
            The number of files deleted.
        """
        if not self._prune_lock.acquire(blocking=False):
            return 0  # another thread is at it
        try:
            return self._prune()
        finally:
            self._prune_lock.release()

    def _prune(self) -> int:
        files: list[tuple[float, int, str]] = []  # (mtime, size, path)
        for entry in os.scandir(self.root):
            if entry.name.endswith(".log"):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    files.append((st.st_mtime, st.st_size, entry.path))
        files.sort()
        total = sum(size for _, size, _ in files)
        cutoff = time.time() - self.keep_days * 86400
        if total <= self.max_bytes and (not files or files[0][0] >= cutoff):
            return 0
        try:
            spooled = _spooled_queue_ids(self.spool)
        except OSError as exc:
            log.warning("journal %s: not pruned, the spool cannot be listed: %s", self.root, exc)
            return 0
        deleted = 0
        for mtime, size, path in files:
            if mtime >= cutoff and total <= self.max_bytes:
                break
            if path != str(self.path) and _delete_unless_needed(path, spooled):
                total -= size
                deleted += 1
        if total > self.max_bytes:
            log.warning(
                "journal %s: %d bytes, over its %d-byte cap: the rest is still needed by "
                "messages in the spool or open by a writer",
                self.root,
                total,
                self.max_bytes,
            )
        return deleted

    def append(self, records: Iterable[JournalRecord]) -> None:
        """Append records durably (one ``O_DSYNC`` write).

        Raises:
            OSError: not written (the journal stays usable; a partial line is cut
                off or, failing that, isolated by a newline).
        """
        payload = b"".join(r.line() for r in records)
        if not payload:
            return
        with self._lock:
            rotated = self._size >= self.segment_bytes
            if rotated:
                self._open_segment()
            if self._dirty:
                payload = b"\n" + payload
            offset = self._size
            try:
                view = memoryview(payload)
                while view:
                    n = os.pwrite(self._fd, view, offset + len(payload) - len(view))
                    view = view[n:]
            except BaseException:
                try:
                    os.ftruncate(self._fd, offset)
                except OSError:
                    self._dirty = True
                raise
            self._size = offset + len(payload)
            self._dirty = False
        if rotated:
            self.prune()  # outside the lock: other appends go on meanwhile

    def close(self) -> None:
        """Close the journal file."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    def final_statuses(
        self, queue_ids: Collection[str], since: float
    ) -> dict[tuple[str, int], Status]:
        """Look up the final outcomes (SENT, FAILED) recorded for some messages, by any
        process. Reads files last written after ``since``; meant for crash recovery.

        Args:
            queue_ids: the messages of interest.
            since: Unix time no later than when the oldest of them was received.

        Returns:
            ``{(queue id, recipient index): status}``.

        Raises:
            OSError: a journal file could not be read.
        """
        wanted = set(queue_ids)
        found: dict[tuple[str, int], Status] = {}
        if not wanted:
            return found
        cutoff = since - _CLOCK_SLACK
        for entry in os.scandir(self.root):
            if not entry.name.endswith(".log"):
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    continue
                with open(entry.path, "rb") as f:
                    content = f.read()
            except FileNotFoundError:
                continue
            for line in content.split(b"\n"):
                fields = line.split(b"\t", 4)
                if len(fields) != 5:
                    continue  # torn or foreign
                qid = fields[1].decode("ascii", "replace")
                status = _FINAL.get(fields[3].decode("ascii", "replace"))
                if qid in wanted and status is not None and fields[2].isdigit():
                    found[(qid, int(fields[2]))] = status
        return found


def _spooled_queue_ids(spool: Path) -> frozenset[str]:
    """The queue IDs of every data file in the spool, whichever process holds it
    (``DATA/spool/NN/<queue id>``; data files stay in their slot's directory).

    Raises:
        OSError: the spool exists but cannot be listed.
    """
    ids: set[str] = set()
    try:
        slots = os.listdir(spool)
    except FileNotFoundError:
        return frozenset()
    for name in slots:
        if parse_slot_dir_name(name) is None:
            continue
        try:
            ids.update(f for f in os.listdir(spool / name) if is_queue_id(f))
        except FileNotFoundError:
            continue
    return frozenset(ids)


def _delete_unless_needed(path: str, spooled: frozenset[str]) -> bool:
    """Delete a closed journal file that names none of ``spooled``; False if it is
    open by its writer (locked), names one of them, or is gone already."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive and may still append
        if spooled:
            with open(fd, "rb", closefd=False) as f:
                for line in f:
                    fields = line.split(b"\t", 2)
                    if len(fields) == 3 and fields[1].decode("ascii", "replace") in spooled:
                        return False
        # Locked and read: a closed file never gets another record, so this is final.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)
