"""How many times each mail's processing failed, kept on disk, so that a mail that kills
its process every time (a crash loop) ends in the error repository too.

James's spooler gives up on a mail after ``MAXIMUM_FAILURE_COUNT`` (5) failures; it
counts exceptions, in memory. A mail that makes the process die (a mailet calling
``os._exit``, a segfault in an extension, the OOM killer) is never counted there: it is
recovered at the next start and kills that process too, for ever.

Theory of operation
-------------------
``DATA/mailet/failures/<queue id>`` holds a mail's failure count (ASCII), written when a
failure is counted and removed when the mail leaves the spool. An exception raised out of
the container is counted at once. A death is counted by whoever recovers the mail:

* each process holds an *in-flight* file, ``DATA/mailet/inflight/<time>-<pid>``, under
  ``flock``, listing the mails (queue ID and spool data path) that are in the container
  now (one per delivery thread). It is rewritten in place when a mail goes in and once
  a batch is through: through a shared memory map of the file, so a memory copy and no
  system call (a ``pwrite`` per mail was a GIL hand-off per mail for the delivery thread);
  blanks over the rest, no ``fsync``: a process that dies leaves its page cache to the
  kernel; only a power loss could lose a count, and then a mail gets one more try.
  The mapped part is written with blanks first, so no page of the map is a hole that a
  full disk could refuse at write-back (SIGBUS); a list longer than the map is written
  with ``pwrite``.
  Only the mail in the container counts, not the rest of its batch, so one poisonous
  mail does not take the mails received with it to the error repository;
* a file whose lock can be taken belongs to a dead process. Before a *recovered* mail is
  processed, every such file is read: each mail listed whose data file still exists was
  being processed when its process died, and its count goes up by one. The file is
  then removed.

Normal operation pays one small memory copy per mail, one per batch, and reads nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import threading
import time
from pathlib import Path

from kittiwake.delivery.base import DeliveryJob
from kittiwake.queue._qid import is_queue_id

__all__ = ["FailureCounts"]

log = logging.getLogger("kittiwake.mailet")

#: bytes of the in-flight file written through the memory map (some 40 mails in the
#: container at once, a line each; a longer list is written with pwrite)
_MAPPED = 4096


class FailureCounts:
    """Failure counts under ``root`` (``DATA/mailet``) for one process. Thread-safe."""

    def __init__(self, root: Path) -> None:
        """Create this process's in-flight file (locked).

        Raises:
            OSError: the directories or the file cannot be created.
        """
        self.counts_dir = root / "failures"
        self.inflight_dir = root / "inflight"
        self.counts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.inflight_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}  # queue ID -> count, for mails with a file
        self._busy: dict[str, str] = {}  # queue ID -> data path, being processed now
        self._length = 0  # bytes in the in-flight file
        self._dirty = False  # _busy changed since the last write
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = self.inflight_dir / f"{stamp}-{os.getpid()}-{id(self):x}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._map: mmap.mmap | None = None
        try:
            os.pwrite(self._fd, b" " * _MAPPED, 0)  # real blocks under the map, no holes
            self._map = mmap.mmap(self._fd, _MAPPED)
        except OSError as exc:  # written with pwrite then
            log.warning("%s: not mapped: %s", self.path, exc)
        self._harvest()  # also removes the files of processes that died idle

    def close(self) -> None:
        """Remove the in-flight file (nothing is being processed any more)."""
        with self._lock:
            if self._fd >= 0:
                if self._map is not None:
                    self._map.close()
                    self._map = None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                os.close(self._fd)
                self._fd = -1

    # -- in flight -------------------------------------------------------------

    def begin(self, job: DeliveryJob) -> None:
        """``job``'s mail is being processed from now on (before any of its effects)."""
        with self._lock:
            self._busy[job.queue_id] = job.data_path
            self._write()

    def end(self, job: DeliveryJob) -> None:
        """``job``'s mail is no longer being processed (written by the next
        :meth:`begin` or :meth:`flush`: until then a death still counts for it)."""
        with self._lock:
            self._busy.pop(job.queue_id, None)
            self._dirty = True

    def flush(self) -> None:
        """Write what :meth:`end` left (at the end of a batch's processing)."""
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        if self._fd < 0:
            return
        data = "".join(f"{q} {p}\n" for q, p in self._busy.items()).encode(
            "utf-8", "surrogateescape"
        )
        # blanks over what is left of a longer list: one pwrite, no ftruncate (which
        # costs three times as much here, twice per mail)
        padded = data + b" " * (self._length - len(data))
        self._dirty = False
        if self._map is not None and len(padded) <= _MAPPED:
            self._map[: len(padded)] = padded
            self._length = len(padded)
            return
        try:
            os.pwrite(self._fd, padded, 0)
        except OSError as exc:  # a count may be missed; processing goes on
            log.error("%s: %s", self.path, exc)
            return
        self._length = len(padded)

    # -- counts ----------------------------------------------------------------

    def count(self, job: DeliveryJob) -> int:
        """Failures counted so far for ``job``'s mail (dead processes included)."""
        qid = job.queue_id
        with self._lock:
            n = self._counts.get(qid)
        if n is not None or not job.recovered:
            return n or 0
        self._harvest()
        with self._lock:
            n = self._counts[qid] = self._read(qid)
        return n

    def add(self, qid: str) -> int:
        """Count one more failure of ``qid``; return the new count (kept in memory
        if the disk refuses it)."""
        with self._lock:
            n = self._counts.get(qid)
            if n is None:
                n = self._read(qid)
            n += 1
            self._counts[qid] = n
            try:
                self._store(qid, n)
            except OSError as exc:
                log.error("%s: failure count not saved: %s", qid, exc)
        return n

    def clear(self, qid: str) -> None:
        """``qid`` left the spool: forget its count."""
        with self._lock:
            if self._counts.pop(qid, None):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.counts_dir / qid)

    def _read(self, qid: str) -> int:
        try:
            return int((self.counts_dir / qid).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _store(self, qid: str, n: int) -> None:
        path = self.counts_dir / qid
        tmp = self.counts_dir / f".{qid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"%d\n" % n)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _harvest(self) -> None:
        """Count a failure for every mail a dead process was processing."""
        try:
            names = os.listdir(self.inflight_dir)
        except FileNotFoundError:
            return
        for name in names:
            path = self.inflight_dir / name
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                # another harvester may have removed it between our open and our lock
                if not path.exists() or os.fstat(fd).st_ino != path.stat().st_ino:
                    continue
                content = os.pread(fd, 1 << 20, 0).decode("utf-8", "surrogateescape")
                for line in content.splitlines():
                    qid, _, data_path = line.strip().partition(" ")
                    if is_queue_id(qid) and os.path.exists(data_path):
                        n = self.add(qid)
                        log.warning("%s: its process died while processing it (failure %d)", qid, n)
                path.unlink()
            except OSError as exc:
                log.error("%s: %s", path, exc)
            finally:
                os.close(fd)
