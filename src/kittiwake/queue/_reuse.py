"""Data files of relayed messages, kept to be written again instead of unlinked.

A relayed message's spool file lives for well under a second: created, written, sent,
unlinked. On ext4 without a journal every file creation scans past each inode of its
block group freed in the last minute or so (``recently_deleted`` in ``ialloc.c``), so a
relay that creates and unlinks a file per message makes its own creations slower the
longer it runs (measured: ~30 µs of kernel time per creation settled, ~400 µs right after
tens of thousands of deletions). A file kept here is renamed back into place and written
over (cut to the new size if it was longer): no inode is freed or allocated. Written
over, not opened with ``O_TRUNC``: truncating waits for the pages the last ``syncfs`` is
still writing back (measured: 13 % of the event loop's time in a relay run, three times
what creating the file cost).

Two rules keep that safe:

- Only a file nothing else points at is kept: one link, ours, mode 0600, not large. A
  data file hard-linked into a Maildir or a mail repository is that mailbox's copy and
  is unlinked as before, never written again.
- A kept file is written again only after a flush barrier (the spool's ``syncfs``)
  that began after the rename that took it out of the queue made that rename durable.
  Otherwise a crash could leave the old name on disk (rename not yet written) over the
  new message's blocks, and recovery would deliver the new message's bytes to the old
  message's recipients. (So only with ``sync="filesystem"``, whose ``syncfs`` also
  makes the data written over durable before the new record.)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading

__all__ = ["FREE_PREFIX", "FreeFiles"]

#: the name prefix of kept files in a slot directory (never a queue ID)
FREE_PREFIX = "free."
#: at most this many files kept per spool (the relay's messages in flight, and then some)
FREE_MAX = 256
#: larger files are unlinked: a kept file keeps its blocks until it is written again
FREE_MAX_SIZE = 1 << 20


class FreeFiles:
    """Kept data files of one slot directory. Thread-safe: files are kept by the
    delivery thread, taken by whoever prepares a commit, and the barrier is the
    flushing thread's."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._names = itertools.count()
        # (name, size in bytes) of each kept file
        self._waiting: list[tuple[str, int]] = []  # renamed, no barrier begun since
        self._syncing: list[tuple[str, int]] = []  # renamed before the barrier under way
        self._ready: list[tuple[str, int]] = []  # renamed before a barrier that completed
        self._euid = os.geteuid()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._syncing) + len(self._ready)

    def keep(self, path: str) -> bool:
        """Take the finished entry's data file ``path`` out of the queue, as unlinking
        it would: True if it was kept, False if the caller must unlink it.

        Raises:
            FileNotFoundError: ``path`` is gone already.
        """
        if len(self) >= FREE_MAX:
            return False
        st = os.lstat(path)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_nlink != 1
            or st.st_uid != self._euid
            or stat.S_IMODE(st.st_mode) != 0o600
            or st.st_size > FREE_MAX_SIZE
        ):
            return False
        name = f"{self._dir}/{FREE_PREFIX}{next(self._names)}"
        os.rename(path, name)
        with self._lock:
            self._waiting.append((name, st.st_size))
        return True

    def take(self) -> tuple[str, int] | None:
        """A kept file that may be written again, and its size; None if there is none."""
        with self._lock:
            return self._ready.pop() if self._ready else None

    def barrier_begins(self) -> None:
        """A flush barrier starts: renames done so far are durable once it ends."""
        with self._lock:
            self._syncing.extend(self._waiting)
            self._waiting = []

    def barrier_done(self) -> None:
        """The barrier begun last completed."""
        with self._lock:
            self._ready.extend(self._syncing)
            self._syncing = []

    def clear(self) -> None:
        """Unlink every kept file (at close: an idle slot holds only its lock file)."""
        with self._lock:
            names = self._waiting + self._syncing + self._ready
            self._waiting, self._syncing, self._ready = [], [], []
        for name, _size in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
