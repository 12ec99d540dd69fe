"""The durable spool: ``250`` after DATA is sent only once :meth:`SpoolWriter.commit`
has returned, and by then the message and its envelope are on disk and fsynced.

Theory of operation
-------------------
Each process owns a *slot* directory ``DATA/spool/NN/`` (:mod:`._slots`), so it never
contends with other processes for names, and a crashed process's messages are taken over
whole by whoever locks its slot next.

A message costs one file: its data, ``NN/<QUEUEID>``, holding exactly the bytes its
mailboxes will get (Return-Path and Received first), so that delivery can hard-link it
into each Maildir instead of copying (:mod:`kittiwake.delivery.maildir`). The envelope
is not a second file: it is one record appended to the slot's log segment, and the
appends of every commit that arrives while a flush is under way are written and
fsynced together (group commit). Per message that saves the creation, fsync, rename and
unlink of an envelope file, which on this 2-core box cost more CPU than everything else
the spool does (file creation alone is ~30 µs of kernel time, and each fsync more).

Commit (the event loop never waits on the disk):

1. create the data file if it is still only in memory (a small message is written in
   one go at commit); a large one spilled to its file as it streamed. With
   ``sync="filesystem"`` this is a write to the page cache and runs on the event loop;
   with ``"file"`` it waits for the disk, in a worker thread;
2. queue its record for the next group flush, and wait for that flush, which does:
   make the data files of the batch and their names durable, then one ``write`` of all
   queued records to the segment, opened ``O_DSYNC`` (the write returns once the
   records are on disk, as ``write`` + ``fdatasync`` would).

How the data files become durable is :attr:`Spool.sync`:

* ``"filesystem"`` (the default on Linux): one ``syncfs(2)`` per flush, for every data
  file of the batch at once. Per file, an ``fsync`` of a new file on ext4 writes its
  data block, its inode's table block and its directory block, and flushes the disk's
  write cache; at 20 concurrent sessions that is the largest kernel cost of a message.
  One ``syncfs`` writes the blocks the batch shares once and flushes once (measured:
  90-110 µs of machine CPU less per message, 8-12 % more messages per second). The cost:
  a flush also waits for whatever else is dirty on that filesystem, so the spool
  belongs on a filesystem without heavy unrelated writers (its own, as Postfix's
  queue often is); there, ``"file"`` is the choice.
* ``"file"``: each data file is written ``O_DSYNC`` (a spilled one ``fsync``-ed), then
  one ``fsync`` of the slot directory per flush makes the new names durable.

The record is the commit point. A crash before it leaves a data file without a record
(removed by recovery); a crash in the middle of it leaves a torn record (skipped:
records are checksummed lines). After delivery the data file is unlinked; a record
whose data file is gone is finished, so no "done" record is needed. A relayed
message's data file is renamed to ``free.N`` instead, and written over by a later
message once a flush has made that rename durable (:mod:`._reuse`: no inode freed and
allocated per relayed message); recovery deletes ``free.*`` files. Segments are
rotated at :attr:`Spool.segment_bytes`; a segment is deleted once none of its entries
is pending, and still-pending records are copied forward out of old segments so a
message stuck in the queue does not pin a series of segment files.

Concurrency: commits run in the spool's own worker threads (:mod:`._committer`); the
flush is done by whichever thread finds none running, so one ``fsync`` covers every
commit prepared before it started. Delivery calls :meth:`Spool.remove` from its own
threads; :attr:`Spool._state` (a lock) guards the bookkeeping they share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

from kittiwake._files import O_NEW, syncfs, write_all
from kittiwake.queue import _slots
from kittiwake.queue._committer import GroupCommitter
from kittiwake.queue._envelope import Envelope, SpoolEntry, iter_records
from kittiwake.queue._qid import MAX_SLOTS, QueueIdAllocator, is_queue_id
from kittiwake.queue._reuse import FreeFiles
from kittiwake.queue._slots import SlotState
from kittiwake.queue._writer import PendingCommit, SpoolWriter

__all__ = ["SYNC_MODES", "Envelope", "Spool", "SpoolEntry", "SpoolWriter", "list_spool"]

log = logging.getLogger("kittiwake.queue")

#: the queue-ID clock floor is saved this far ahead of the IDs actually issued, so it
#: only needs rewriting about once a second
_FLOOR_MARGIN_MS = 2000

#: how a group flush makes the batch's data files durable (see the module doc)
SYNC_MODES = ("filesystem", "file")


class Spool:
    """The spool under ``root`` (``DATA/spool``), as seen by one process.

    Call :meth:`open` (or use ``with``) before anything else; it takes a slot and
    recovers what a previous owner left. Methods marked *blocking* do file I/O; call
    them from a thread when the event loop is running.
    """

    def __init__(
        self,
        root: Path,
        *,
        threads: int | None = None,
        segment_bytes: int = 4 << 20,
        memory_threshold: int = 64 << 10,
        sync: str = "filesystem",
    ) -> None:
        """Args:
        root: the spool directory, created 0700 if missing.
        threads: worker threads for commits; None: 1 with ``sync="filesystem"``, where
            the threads only flush and one flush runs at a time (a second thread only
            adds GIL hand-offs: measured ~5 % fewer messages per second), 4 with
            ``"file"``, where a commit holds one while its file's fsync waits for the
            disk (commits beyond this many wait for a thread; they are not lost).
        segment_bytes: rotate the envelope log past this size.
        memory_threshold: bytes a message may hold in memory before it spills to
            its file (bounds memory per session).
        sync: one of :data:`SYNC_MODES`; ``"filesystem"`` falls back to ``"file"``
            where the C library has no ``syncfs``.

        Raises:
            ValueError: ``sync`` is not one of :data:`SYNC_MODES`.
        """
        if sync not in SYNC_MODES:
            raise ValueError(f"spool sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        #: the durability mode in force (``"file"`` when ``syncfs`` is missing)
        self.sync = sync if sync == "file" or syncfs is not None else "file"
        self.root = root
        self.segment_bytes = segment_bytes
        self.memory_threshold = memory_threshold
        self._root = str(root)
        self._threads = threads if threads is not None else 1 if self.sync == "filesystem" else 4
        self._committer: GroupCommitter[PendingCommit] | None = None
        self._primary: SlotState | None = None
        self._slots: dict[int, SlotState] = {}
        self._alloc: QueueIdAllocator | None = None
        self._saved_floor = 0
        self._ready: list[SpoolEntry] = []
        self._listeners: list[Callable[[], object]] = []
        #: messages begun and neither committing nor aborted yet (on the event loop;
        #: the flushing thread reads it to wait for their commits: _committer's gather)
        self.receiving = 0
        # Guards the SlotState maps and _ready (commit, delivery and loop threads).
        self._state = threading.Lock()
        self._seg_fd = -1
        self._seg_size = 0
        self._seg_broken = False
        self._dir_fd = -1
        self._free: FreeFiles | None = None
        #: group flushes done (for tests and measurements)
        self.flushes = 0

    # -- lifecycle -------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._primary is not None

    @property
    def slot(self) -> int:
        """This process's slot (the ``NN`` in ``spool/NN/`` and in its queue IDs)."""
        if self._primary is None:
            raise RuntimeError("spool is not open")
        return self._primary.number

    def open(self) -> None:
        """Take a slot and recover its entries, then adopt dead processes' slots
        (*blocking*). Recovered entries are returned by the next :meth:`take_ready`.

        Raises:
            OSError: the spool directory is unusable.
            RuntimeError: already open, or all 256 slots are held by live processes.
        """
        if self._primary is not None:
            raise RuntimeError("spool is already open")
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        for number in range(MAX_SLOTS):
            fd = _slots.lock_slot(self._root, number, create=True)
            if fd is None:
                continue
            state = SlotState(
                number, os.path.join(self._root, _slots.slot_dir_name(number)), fd, primary=True
            )
            try:
                self._take_over(state)
            except BaseException:
                os.close(fd)
                raise
            self._primary = state
            break
        else:
            raise RuntimeError(f"{self._root}: all {MAX_SLOTS} spool slots are in use")
        self._alloc = QueueIdAllocator(self._primary.number, floor_ms=self._primary.floor_ms)
        self._saved_floor = 0  # saved by the first begin()
        self._dir_fd = os.open(self._primary.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # only where the flush's syncfs makes a file written over durable (with
        # "file", each data file is one O_DSYNC write into a new file)
        self._free = FreeFiles(self._primary.path) if self.sync == "filesystem" else None
        self._committer = GroupCommitter(
            self._threads,
            self._prepare,
            self._flush,
            self._abandon,
            self._notify,
            # with one syncfs per flush, preparing is a page-cache write: on the loop,
            # it saves a thread hand-off per message
            inline_prepare=self.sync == "filesystem",
            gather=lambda: self.receiving,
        )
        self.adopt_orphans()

    def _take_over(self, state: SlotState) -> int:
        envelopes = _slots.recover_slot(state)
        entries = [
            SpoolEntry(e, os.path.join(state.path, e.queue_id), state.number, True)
            for e in envelopes
        ]
        with self._state:
            self._slots[state.number] = state
            self._ready.extend(entries)
        if entries:
            log.info("spool %s: recovered %d message(s)", state.path, len(entries))
        return len(entries)

    def adopt_orphans(self) -> int:
        """Take over the slots of processes that died (*blocking*); their entries are
        returned by the next :meth:`take_ready`. Cheap when there are none.

        Returns:
            The number of entries taken over.
        """
        taken = 0
        for name in sorted(os.listdir(self._root)):
            number = _slots.parse_slot_dir_name(name)
            if number is None or number in self._slots:
                continue
            fd = _slots.lock_slot(self._root, number, create=False)
            if fd is None:
                continue
            state = SlotState(number, os.path.join(self._root, name), fd, primary=False)
            try:
                found = self._take_over(state)
            except BaseException:
                with self._state:
                    self._slots.pop(number, None)
                os.close(fd)
                raise
            taken += found
            if not found:
                with self._state:
                    self._slots.pop(number, None)
                _slots.release_slot(state, drop_segments=True)
        return taken

    def close(self) -> None:
        """Stop using the spool (*blocking*). Pending entries stay on disk for the next
        start; a slot with nothing pending keeps only its lock file. Writers still open are left for
        recovery to clean up."""
        if self._committer is not None:
            self._committer.shutdown()
            self._committer = None
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
            self._seg_fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._free is not None:
            self._free.clear()
            self._free = None
        with self._state:
            slots, self._slots, self._primary = list(self._slots.values()), {}, None
            self._ready = []
        for state in slots:
            _slots.release_slot(state, drop_segments=not state.where)

    def __enter__(self) -> Spool:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- receiving -------------------------------------------------------------

    def begin(self) -> SpoolWriter:
        """Start a message: allocate its queue ID. Cheap; no file is created yet.

        Raises:
            RuntimeError: the spool is not open.
        """
        qid, path = self.reserve()
        self.receiving += 1  # until the writer commits or aborts
        return SpoolWriter(self, qid, path)

    def reserve(self) -> tuple[str, str]:
        """A new queue ID and the data file path it names, for a message that is
        written and delivered elsewhere (LMTP's direct delivery); it is never committed
        here, so it does not count in :attr:`receiving`.

        Raises:
            RuntimeError: the spool is not open.
        """
        primary, alloc = self._primary, self._alloc
        if primary is None or alloc is None:
            raise RuntimeError("spool is not open")
        qid = alloc.next()
        if alloc.high_water_ms >= self._saved_floor:
            self._save_floor()
        return qid, f"{primary.path}/{qid}"

    def _save_floor(self) -> None:
        assert self._primary is not None and self._alloc is not None
        # No fsync: the floor only guards against a wall clock set back across a
        # restart, and it survives a process crash in the page cache.
        self._saved_floor = self._alloc.high_water_ms + _FLOOR_MARGIN_MS
        _slots.save_floor(self._primary.lock_fd, self._saved_floor)

    def add_listener(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` on the event loop after every successful commit (the
        runner's ``wake``)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # -- the two halves of a commit (see _committer: threads, or the loop for _prepare) --

    def _prepare(self, commit: PendingCommit) -> None:
        """Write the data file if it is still in memory; with ``sync="file"``, make
        its data durable too."""
        fd, commit.fd = commit.fd, -1
        try:
            if self.sync == "filesystem":  # the flush's syncfs makes it durable
                data = commit.data or b""
                was = 0  # the size of a kept file written over
                if fd < 0:
                    fd, was = self._reuse(commit.entry.data_path)
                    if fd < 0:
                        fd = os.open(commit.entry.data_path, O_NEW, 0o600)
                if data:
                    write_all(fd, data)
                if was > len(data):
                    os.ftruncate(fd, len(data))
                return
            if fd < 0 and commit.data:
                # O_DSYNC: the write returns once the data and the size are on disk,
                # as after fdatasync (what a new file needs; its name is made durable
                # by the flush's directory fsync). One system call fewer per message,
                # and so one GIL hand-off fewer for this thread.
                fd = os.open(commit.entry.data_path, O_NEW | os.O_DSYNC, 0o600)
                write_all(fd, commit.data)
                return
            if fd < 0:
                fd = os.open(commit.entry.data_path, O_NEW, 0o600)
            elif commit.data:
                write_all(fd, commit.data)
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def _reuse(self, path: str) -> tuple[int, int]:
        """Open a kept data file (see :mod:`._reuse`) renamed to ``path``, to be
        written over; return it and its size, (-1, 0) if there is none (create the file
        then)."""
        free = self._free
        kept = free.take() if free is not None else None
        if kept is None:
            return -1, 0
        name, size = kept
        try:
            os.rename(name, path)  # a fresh queue ID: nothing is there to replace
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name)
            return -1, 0
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC), size

    @staticmethod
    def _abandon(commit: PendingCommit) -> None:
        """A failed commit leaves no data file behind (a record that did reach the disk
        without its data file counts as finished, so it is harmless)."""
        if commit.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(commit.fd)
            commit.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(commit.entry.data_path)

    def _flush(self, batch: Sequence[PendingCommit]) -> None:
        """Append one batch of records durably. Called by one thread at a time."""
        primary = self._primary
        assert primary is not None
        carried: list[tuple[str, bytes]] = []
        if self._seg_fd < 0 or self._seg_size >= self.segment_bytes or self._seg_broken:
            carried = self._rotate(primary)
        records = [c.record for c in batch]
        if carried:
            records[:0] = [rec for _q, rec in carried]
        payload = b"".join(records)
        # The data files (with "filesystem"), their names and a new segment's name are
        # durable before any record that points at them; so are the renames of kept
        # data files out of the queue, before such a file is written again.
        free = self._free
        if free is not None:
            free.barrier_begins()
        if self.sync == "filesystem":
            assert syncfs is not None
            syncfs(self._dir_fd)
        else:
            os.fsync(self._dir_fd)
        if free is not None:
            free.barrier_done()
        offset = self._seg_size
        try:
            _pwrite_all(self._seg_fd, payload, offset)  # O_DSYNC: durable on return
        except BaseException:
            # A partial append is harmless (records are checksummed, start with "\n"),
            # but cut it off if we can, and start a fresh segment next time: after a
            # failed fsync the file's state is unknown.
            with contextlib.suppress(OSError):
                os.ftruncate(self._seg_fd, offset)
            self._seg_broken = True
            raise
        self._seg_size = offset + len(payload)
        self.flushes += 1
        number = primary.current
        stale: list[int] = []
        with self._state:
            counts, where, saved = primary.counts, primary.where, primary.records
            for qid, _rec in carried:
                old = where.get(qid)
                if old is not None and old != number:
                    where[qid] = number
                    counts[old] -= 1
                    counts[number] = counts.get(number, 0) + 1
            for c in batch:
                qid = c.entry.envelope.queue_id
                where[qid] = number
                saved[qid] = c.record
                self._ready.append(c.entry)
            counts[number] = counts.get(number, 0) + len(batch)
            for seg, n in list(counts.items()):
                if n == 0 and seg != number:
                    del counts[seg]
                    stale.append(seg)
        for seg in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(primary.segment_path(seg))

    def _rotate(self, primary: SlotState) -> list[tuple[str, bytes]]:
        """Open a new segment; return the pending entries to copy into it (those whose
        record sits in a segment older than the one just closed)."""
        previous = primary.current
        number = primary.last_segment + 1
        # O_DSYNC: each append returns once it is on disk, as write + fdatasync did, in
        # one system call (a flush holds one message most of the time: measured 1.1
        # flushes per message at 20 sessions).
        fd = os.open(primary.segment_path(number), O_NEW | os.O_DSYNC, 0o600)
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
        self._seg_fd, self._seg_size, self._seg_broken = fd, 0, False
        with self._state:
            primary.current = primary.last_segment = number
            return [(q, primary.records[q]) for q, seg in primary.where.items() if seg != previous]

    # -- delivering ------------------------------------------------------------

    def take_ready(self) -> list[SpoolEntry]:
        """Return the entries committed or recovered since the last call (each entry
        exactly once; the caller delivers it and then calls :meth:`remove`)."""
        with self._state:
            ready, self._ready = self._ready, []
        return ready

    def remove(self, entries: Iterable[SpoolEntry], *, reuse: bool = False) -> None:
        """Drop delivered (or finally failed) entries from the spool (*blocking*).

        Call only once the delivery is durable and journalled: the data file is
        unlinked, which is what marks the entry finished.

        Args:
            reuse: the entries were relayed (not linked into a mailbox, most likely):
                keep their data files to write new messages into (checked file by
                file: one with another link is unlinked as usual).
        """
        entries = list(entries)
        primary, free = self._primary, self._free if reuse else None
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if (
                    free is not None
                    and primary is not None
                    and entry.slot == primary.number
                    and free.keep(entry.data_path)
                ):
                    continue
                os.unlink(entry.data_path)
        stale: list[str] = []
        released: list[SlotState] = []
        with self._state:
            for entry in entries:
                state = self._slots.get(entry.slot)
                if state is None:
                    continue
                qid = entry.envelope.queue_id
                seg = state.where.pop(qid, None)
                state.records.pop(qid, None)
                if seg is None:
                    continue
                left = state.counts[seg] = state.counts[seg] - 1
                if left == 0 and seg != state.current:
                    del state.counts[seg]
                    stale.append(state.segment_path(seg))
                if not state.primary and not state.where:
                    del self._slots[state.number]
                    released.append(state)
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for state in released:
            _slots.release_slot(state, drop_segments=True)

    @property
    def pending(self) -> int:
        """Entries held by this process and not yet removed."""
        with self._state:
            return sum(len(s.where) for s in self._slots.values())


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def list_spool(root: Path) -> list[SpoolEntry]:
    """Every message in the spool, whichever process holds it (read-only, no locks:
    an entry being committed or delivered right now may or may not be listed).

    Args:
        root: the spool directory.

    Returns:
        Entries oldest first, ``recovered`` False.
    """
    out: list[SpoolEntry] = []
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return out
    for name in names:
        number = _slots.parse_slot_dir_name(name)
        if number is None:
            continue
        path = os.path.join(root, name)
        try:
            files = os.listdir(path)
        except FileNotFoundError:
            continue
        data = {f for f in files if is_queue_id(f)}
        found: dict[str, Envelope] = {}
        for f in sorted(files):
            if f.startswith(_slots.SEGMENT_PREFIX):
                try:
                    with open(os.path.join(path, f), "rb") as fh:
                        content = fh.read()
                except FileNotFoundError:
                    continue
                for env, _raw in iter_records(content):
                    if env is not None and env.queue_id in data:
                        found[env.queue_id] = env
        out.extend(SpoolEntry(e, os.path.join(path, q), number, False) for q, e in found.items())
    out.sort(key=lambda e: e.envelope.queue_id)
    return out
