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

Files rotate at :attr:`Journal.segment_bytes` and are deleted after ``keep_days``.
Recovery only reads files modified after the oldest message it is recovering was
received (a record is always written after its message arrived).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from kittiwake.delivery.base import Status

__all__ = ["Journal", "JournalRecord"]

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
        name: str | None = None,
        segment_bytes: int = 64 << 20,
        keep_days: float = 7.0,
    ) -> None:
        """Open a new journal file under ``root`` (created 0700 if missing).

        Args:
            root: ``DATA/journal``.
            name: this writer's name in file names (default: the process ID).
            segment_bytes: start a new file past this size.
            keep_days: delete files last written longer ago than this.

        Raises:
            OSError: the directory or file cannot be created.
        """
        self.root = root
        self.segment_bytes = segment_bytes
        self.keep_days = keep_days
        self._name = name or str(os.getpid())
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._dirty = False  # a failed append may have left a partial line
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._open_segment()
        self._prune()

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
            break
        else:  # pragma: no cover - a thousand rotations within one second
            raise FileExistsError(f"{self.root}: cannot name a new journal file")
        # The file must be findable after a crash before any record in it counts.
        os.fsync(self._dir_fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self._dirty = fd, 0, False
        self.path = path

    def _prune(self) -> None:
        cutoff = time.time() - self.keep_days * 86400
        for entry in os.scandir(self.root):
            if entry.name.endswith(".log") and entry.path != str(self.path):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

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
            if self._size >= self.segment_bytes:
                self._open_segment()
                self._prune()
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
