"""Receiving one message into the spool: :class:`SpoolWriter` (see :mod:`.spool`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING

from kittiwake._files import O_NEW, splice_into_new, write_all
from kittiwake.queue._envelope import Envelope, SpoolEntry, encode_record

if TYPE_CHECKING:
    from kittiwake.queue.spool import Spool

__all__ = ["PendingCommit", "SpoolWriter"]

#: a header block longer than this is read from the file at delivery, not kept in memory
HEAD_MAX = 16384


def _head(data: bytes | None) -> bytes | None:
    """The header block of ``data`` with the empty line that ends it (RFC 5322 2.1),
    or None if there is none within :data:`HEAD_MAX` bytes."""
    if data is None:
        return None
    if data.startswith(b"\r\n"):
        return data[:2]
    end = data.find(b"\r\n\r\n", 0, HEAD_MAX)
    return data[: end + 4] if end >= 0 else None


class PendingCommit:
    """What a commit hands the worker threads."""

    __slots__ = ("data", "entry", "fd", "record")

    def __init__(self, entry: SpoolEntry, fd: int, data: bytes | None, record: bytes) -> None:
        self.entry = entry
        self.fd = fd  # the spilled data file, or -1: create it from ``data``
        self.data = data
        self.record = record


class SpoolWriter:
    """One message being received. Not thread-safe; use it from the event loop."""

    __slots__ = ("_buffer", "_buffered", "_fd", "_spool", "_state", "path", "queue_id", "size")

    def __init__(self, spool: Spool, queue_id: str, path: str) -> None:
        #: the message's queue ID (name it in the 250 reply)
        self.queue_id = queue_id
        #: the data file; it exists only once the message outgrew the memory buffer,
        #: or after :meth:`ensure_file`, until then the bytes are in memory
        self.path = path
        #: bytes written so far
        self.size = 0
        self._spool = spool
        self._fd = -1
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._state = "open"  # open -> committing -> committed | failed; or aborted

    def ensure_file(self) -> str:
        """Put what was written so far into the data file and return its path, for a
        hook that must read the message before it is accepted (blocking; creates the
        file on the event loop, so call it only when such a hook exists).

        Raises:
            OSError: the file could not be written.
            RuntimeError: the writer was already committed or aborted.
        """
        if self._state != "open":
            raise RuntimeError(f"{self.queue_id}: ensure_file after {self._state}")
        if self._fd < 0:
            self._spill()
        return self.path

    def _spill(self) -> None:
        self._fd = os.open(self.path, O_NEW, 0o600)
        data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
        write_all(self._fd, data)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the message.

        Small messages stay in memory until commit; past
        :attr:`Spool.memory_threshold` bytes the data goes to the file as it comes, so
        memory use stays bounded whatever the message size.

        Raises:
            OSError: the file could not be written (``ENOSPC``: reply 452 4.3.1 and
                call :meth:`abort`).
            RuntimeError: the writer was already committed or aborted.
        """
        if self._state != "open":
            raise RuntimeError(f"{self.queue_id}: write after {self._state}")
        self.size += len(chunk)
        if self._fd >= 0:
            write_all(self._fd, chunk)
            return
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._spool.memory_threshold:
            self._spill()  # a blocking create on the loop, but once per large message

    def splice(self, start: int, end: int, data: bytes) -> None:
        """Replace the bytes ``start:end`` written so far with ``data`` (a message hook
        adding or replacing header fields). In memory this is a slice; once the message
        is in its file, the file is rewritten (blocking; only messages that hooks edit
        pay for it).

        Raises:
            ValueError: the range is outside what was written.
            OSError: the file could not be rewritten (the message is unchanged).
            RuntimeError: the writer was already committed or aborted.
        """
        if self._state != "open":
            raise RuntimeError(f"{self.queue_id}: splice after {self._state}")
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"{self.queue_id}: splice {start}:{end} of {self.size} bytes")
        if self._fd < 0:
            joined = b"".join(self._buffer)
            self._buffer = [joined[:start], data, joined[end:]]
            self._buffered += len(data) - (end - start)
        else:
            self._rewrite(start, end, data)
        self.size += len(data) - (end - start)

    def _rewrite(self, start: int, end: int, data: bytes) -> None:
        fd = splice_into_new(self.path, start, end, data)
        os.close(self._fd)
        self._fd = fd

    async def commit(self, envelope: Envelope) -> None:
        """Make the message durable; only once this returns may the caller send 250.

        If the calling task is cancelled while this waits, the commit still completes
        or fails on its own (and a committed message is still delivered).

        Args:
            envelope: with ``queue_id == self.queue_id``. Its ``size`` is set to
                :attr:`size` (the bytes actually spooled, trace headers included:
                Maildir names carry it, and Dovecot checks it).

        Raises:
            OSError: the disk refused (``ENOSPC``, ``EIO``...); nothing of the message is
                left that recovery would deliver. Reply 452 4.3.1 (or 451).
            ValueError: the envelope is for another queue ID.
            RuntimeError: already committed or aborted.
        """
        if self._state != "open":
            raise RuntimeError(f"{self.queue_id}: commit after {self._state}")
        if envelope.queue_id != self.queue_id:
            raise ValueError(f"{self.queue_id}: envelope is for {envelope.queue_id}")
        if envelope.size != self.size:
            envelope = dataclasses.replace(envelope, size=self.size)
        committer = self._spool._committer
        if committer is None:
            raise RuntimeError("spool is not open")
        self._state = "committing"
        self._spool.receiving -= 1
        data = b"".join(self._buffer) if self._fd < 0 else None
        self._buffer = []
        fd, self._fd = self._fd, -1
        entry = SpoolEntry(envelope, self.path, self._spool.slot, False, _head(data))
        try:
            await committer.commit(PendingCommit(entry, fd, data, encode_record(envelope)))
        except asyncio.CancelledError:
            # The commit goes on in its thread; if it succeeds the message is delivered
            # (the client just never hears 250). State stays "committing": abort() is
            # then a no-op, so it cannot remove a message that did get committed.
            raise
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"

    def abort(self) -> None:
        """Throw the message away (idempotent). After a successful :meth:`commit`, or
        while one is in progress, this does nothing: a committed message is never lost
        by an abort."""
        if self._state in ("committing", "committed", "aborted"):
            return
        if self._state == "open":
            self._spool.receiving -= 1
        self._state = "aborted"
        self._buffer = []
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        # A failed commit already removed its file; "open" may have spilled to disk.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
