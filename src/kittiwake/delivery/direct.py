"""Delivery straight into mailboxes while the client waits, with no queue in between (LMTP).

James's LMTP service writes each message into the recipients' mailboxes before it
answers; so does this. One message, any number of recipients:

1. While the text arrives, :class:`MessageFile` keeps it in memory up to
   ``memory_threshold`` bytes, then streams it into a file (memory per session stays
   bounded whatever the message size). The file is a data file in this process's spool
   slot (``DATA/spool/NN/<queue id>``), named by a fresh queue ID, but it never gets an
   envelope record: it is not queued. If the process dies before the file is removed,
   spool recovery removes it as garbage (a data file without a record), and no client
   was told 250 for a message that is not in its mailbox.
2. After the final dot, :meth:`DirectDelivery.deliver` runs in worker threads: write
   what is still in memory, ``fsync`` the file; then the Maildir deliverer
   (:mod:`kittiwake.delivery.maildir`) links it into each recipient's ``new/`` (a copy
   through ``tmp/`` where a link is impossible), ``fsync``s each ``new/`` directory and
   records the outcomes in the delivery journal; then the data file's spool name is
   removed. Only then does each recipient get its reply: the Maildir file is durable
   before its 250.

Deliveries of concurrent sessions share the second step (group commit, the spool's
:class:`~kittiwake.queue._committer.GroupCommitter`): every message whose file is
fsynced while a batch is being delivered goes into the next batch, which costs one
``fsync`` per ``new/`` directory and one journal ``fdatasync`` however many messages
it holds.

Per recipient: a mailbox that cannot be written (``EACCES``, not a directory ...), a
full disk or a quota (``ENOSPC``, ``EDQUOT``) fails that recipient only; the others are
delivered. If the journal cannot be written, every recipient of the batch is reported
failed (temporarily) although the files may already be in the mailboxes: the MTA then
tries again and a recipient may get the message twice; never zero times.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from kittiwake._files import O_NEW, splice_into_new, write_all
from kittiwake.delivery.base import Deliverer, DeliveryJob, Outcome, Target
from kittiwake.queue._committer import GroupCommitter

__all__ = ["DirectDelivery", "MessageFile"]


class MessageFile:
    """One message being received for direct delivery. Use it from the event loop."""

    __slots__ = ("_buffer", "_buffered", "_fd", "_threshold", "path", "queue_id", "size")

    def __init__(self, queue_id: str, path: str, memory_threshold: int) -> None:
        #: names the message in logs, replies and its Maildir file name
        self.queue_id = queue_id
        #: the data file (it exists only once the message outgrew the memory buffer)
        self.path = path
        #: bytes written so far
        self.size = 0
        self._threshold = memory_threshold
        self._fd = -1
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``.

        Raises:
            OSError: the data file could not be created or written (``ENOSPC`` ...).
        """
        self.size += len(chunk)
        if self._fd >= 0:
            write_all(self._fd, chunk)
            return
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._threshold:
            self._spill()  # a blocking create on the loop, but once per large message

    def ensure_file(self) -> str:
        """Put what was written so far into the data file and return its path, for a
        hook that reads the message (blocking).

        Raises:
            OSError: the file could not be written.
        """
        if self._fd < 0:
            self._spill()
        return self.path

    def splice(self, start: int, end: int, data: bytes) -> None:
        """Replace the bytes ``start:end`` written so far with ``data`` (a message hook
        adding or replacing header fields): a slice in memory, else the file is
        rewritten (blocking; only messages that hooks edit pay for it).

        Raises:
            ValueError: the range is outside what was written.
            OSError: the file could not be rewritten (the message is unchanged).
        """
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"{self.queue_id}: splice {start}:{end} of {self.size} bytes")
        if self._fd < 0:
            joined = b"".join(self._buffer)
            self._buffer = [joined[:start], data, joined[end:]]
            self._buffered += len(data) - (end - start)
        else:
            fd = splice_into_new(self.path, start, end, data)
            os.close(self._fd)
            self._fd = fd
        self.size += len(data) - (end - start)

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        """The message from byte ``start`` (blocking reads once it is in its file), to
        copy it elsewhere: a forward over LMTP goes into the spool.

        Raises:
            OSError: the file cannot be read.
        """
        if self._fd < 0:
            yield b"".join(self._buffer)[start:]
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            while chunk := f.read(1 << 20):
                yield chunk

    def _spill(self) -> None:
        self._fd = os.open(self.path, O_NEW, 0o600)
        data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
        write_all(self._fd, data)

    def _finish(self) -> None:
        """Write what is in memory and fsync the file (blocking; a worker thread)."""
        fd, self._fd = self._fd, -1
        try:
            if fd < 0:
                fd = os.open(self.path, O_NEW, 0o600)
            if self._buffer:
                data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
                write_all(fd, data)
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def abort(self) -> None:
        """Throw the message away (idempotent; do not call while :meth:`DirectDelivery.
        deliver` is running for it)."""
        self._buffer, self._buffered = [], 0
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _Pending:
    __slots__ = ("job", "message", "outcomes")

    def __init__(self, message: MessageFile, job: DeliveryJob) -> None:
        self.message = message
        self.job = job
        self.outcomes: list[Outcome] = []


class DirectDelivery:
    """Delivers messages into mailboxes now, from the event loop (see module doc)."""

    def __init__(
        self,
        deliverer: Deliverer,
        reserve: Callable[[], tuple[str, str]],
        *,
        threads: int = 4,
        memory_threshold: int = 64 << 10,
        quota_final: bool = True,
    ) -> None:
        """Args:
        deliverer: the Maildir deliverer (shared with the spool runner: it is
            thread-safe, and the same journal records both).
        reserve: returns a fresh queue ID and the path of its data file (the spool's
            :meth:`~kittiwake.queue.spool.Spool.begin` gives both).
        threads: worker threads; about as many file fsyncs run at once.
        memory_threshold: bytes a message may hold in memory before it spills to
            its file.
        quota_final: a mailbox over quota fails its recipient for good (552 5.2.2);
            False: temporarily (452 4.2.2).
        """
        self.deliverer = deliverer
        self.quota_final = quota_final
        self.memory_threshold = memory_threshold
        self._reserve = reserve
        self._committer: GroupCommitter[_Pending] = GroupCommitter(
            threads, self._prepare, self._flush, self._abandon, _nothing, name="kw-lmtp"
        )

    def begin(self) -> MessageFile:
        """Start receiving a message (cheap: no file yet).

        Raises:
            RuntimeError: the spool that hands out queue IDs is not open.
        """
        queue_id, path = self._reserve()
        return MessageFile(queue_id, path, self.memory_threshold)

    async def deliver(
        self, message: MessageFile, targets: Sequence[Target], received_at: float | None = None
    ) -> list[Outcome]:
        """Deliver ``message`` to every target; return when each outcome is final.

        Every SENT outcome is durable (file and ``new/`` fsynced, journal written) when
        this returns, and the message's data file is gone whatever happened. If the
        awaiting task is cancelled, the delivery still runs to its end.

        Args:
            message: written completely; not to be used afterwards.
            targets: one per recipient, in the order the replies go out.
            received_at: the time in the Maildir file name (default: now).

        Returns:
            One outcome per target, in order.

        Raises:
            OSError: the data file could not be written, or the journal failed: no
                recipient may be told 250.
        """
        job = DeliveryJob(
            message.queue_id,
            message.path,
            time.time() if received_at is None else received_at,
            message.size,
            False,
            tuple(targets),
            quota_final=self.quota_final,
        )
        pending = _Pending(message, job)
        await self._committer.commit(pending)
        return pending.outcomes

    def close(self) -> None:
        """Finish the deliveries under way and stop the threads (blocking)."""
        self._committer.shutdown()

    # -- worker threads --------------------------------------------------------

    @staticmethod
    def _prepare(pending: _Pending) -> None:
        pending.message._finish()

    def _flush(self, batch: Sequence[_Pending]) -> None:
        try:
            results = self.deliverer.deliver([p.job for p in batch])
            for p, outcomes in zip(batch, results, strict=True):
                p.outcomes = outcomes
        finally:
            for p in batch:
                # The mailboxes hold their own links; the spool name is garbage now.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p.job.data_path)

    @staticmethod
    def _abandon(pending: _Pending) -> None:
        pending.message.abort()


def _nothing() -> None:
    return None
