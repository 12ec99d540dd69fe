"""New mails a mailet puts in the spool (James's ``sendMail``): a forward's remote copy.

Theory of operation
-------------------
James's RecipientRewriteTable keeps a forward's local targets in the mail and sends the
remote ones as a *new* mail, enqueued in the spool, marked ``SentByMailet`` (which the
default transport's ``relay-allowed`` matches). Kittiwake does the same: the new mail
gets its own queue ID and is committed to the spool (data fsynced, envelope record
group-committed) before the mail that made it, the *parent*, is finished.

Nothing lost, nothing twice. The parent may run again after a crash, and must then not
make a second copy; but the copy may have been delivered and gone by then, leaving no
trace in the spool. So the order is:

1. commit the copy, its envelope naming the parent (``parent``: queue ID, journal
   index, data path);
2. append a journal record for the parent at an index of its own
   (``FORWARD_INDEX`` + CRC-32 of the key), ``sent``, "forwarded as <queue id>";
3. only then may the copy be processed.

The copy is *held* (deferred, retried by the spool runner) while its parent's data file
still exists and the record of step 2 is not known to be durable. A parent that runs
again (a recovered job, or a retry) first looks for the record of step 2 in the journal
(made: nothing to do), then for a held copy in the spool (crash between steps 1 and 2:
the record is written now and the copy released), and only then makes a copy. A copy
can therefore never be processed while its parent might still make another.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from kittiwake.delivery.base import DeliveryJob, Status
from kittiwake.delivery.journal import Journal, JournalRecord
from kittiwake.mailet.api import Mail
from kittiwake.queue._envelope import Envelope
from kittiwake.queue.spool import list_spool

__all__ = ["FORWARD_INDEX", "Enqueuer", "SpoolMail", "parse_parent"]

log = logging.getLogger("kittiwake.mailet")

#: (message, envelope) -> the new queue ID. Blocking; called from a delivery thread.
#: The envelope's ``queue_id`` and ``size`` are filled in by the spool.
SpoolMail = Callable[[bytes, Envelope], str]

#: journal indexes of "forwarded as" records start here (envelope recipients are below
#: 2**32, recipients made by rewriting between 2**32 and 2**33)
FORWARD_INDEX = 2 << 32
#: how long a copy waits for its parent's thread to finish recording it
_WAIT = 30.0


def forward_index(key: str) -> int:
    """The journal index of the copy made for ``key``."""
    return FORWARD_INDEX + zlib.crc32(key.encode("utf-8", "surrogateescape"))


def parse_parent(text: str) -> tuple[str, int, str] | None:
    """``"<queue id> <index> <path>"`` -> its parts; None if malformed."""
    parts = text.split(" ", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


class Enqueuer:
    """Puts mailets' new mails in the spool and holds them back until their parent has
    recorded them (see the module docstring). Thread-safe."""

    def __init__(self, journal: Journal, spool_root: Path, spool_mail: SpoolMail) -> None:
        """Args:
        journal: the delivery journal (the record of step 2).
        spool_root: ``DATA/spool`` (to find held copies after a crash).
        spool_mail: commits a new mail (see :data:`SpoolMail`).
        """
        self.journal = journal
        self.spool_root = spool_root
        self.spool_mail = spool_mail
        self._cond = threading.Condition()
        self._making: dict[str, int] = {}  # parent queue ID -> copies being made now
        self._released: set[str] = set()  # copies whose record is durable

    def enqueue(self, job: DeliveryJob, recovered: bool, mail: Mail, key: str) -> str:
        """Spool ``mail`` as a new mail made while processing ``job`` (once per key).

        Args:
            job: the parent being processed.
            recovered: the parent may have run before (after a crash, or a retry).
            mail: sender, recipients, message and client facts of the new mail.
            key: identifies this copy among those the parent makes (stable across runs).

        Returns:
            The queue ID of the copy (made now, or before).

        Raises:
            OSError: not spooled, or its record not written (the parent must be tried
                again: it will find the copy then).
        """
        parent = job.queue_id
        index = forward_index(key)
        if recovered:
            found = self._made_before(job, index)
            if found is not None:
                return found
        env = Envelope(
            queue_id="",
            sender=mail.sender or "",
            recipients=tuple(mail.recipients),
            client_address=mail.remote_addr,
            helo=mail.remote_host,
            received_at=time.time(),
            protocol="LOCAL",
            size=0,
            auth_user=mail.auth_user or "",
            parent=f"{parent} {index} {job.data_path}",
        )
        with self._cond:
            self._making[parent] = self._making.get(parent, 0) + 1
        try:
            qid = self.spool_mail(mail.message.as_bytes(), env)
            log.info("%s: to %s: sent as a new mail %s", parent, ",".join(mail.recipients), qid)
            self._record(parent, index, mail.recipients, qid)
        finally:
            with self._cond:
                n = self._making[parent] - 1
                if n:
                    self._making[parent] = n
                else:
                    del self._making[parent]
                self._cond.notify_all()
        return qid

    def _record(self, parent: str, index: int, rcpts: list[str], qid: str) -> None:
        self.journal.append(
            [
                JournalRecord(
                    time.time(), parent, index, Status.SENT, ",".join(rcpts), "", f"as {qid}"
                )
            ]
        )
        with self._cond:
            self._released.add(qid)

    def _made_before(self, job: DeliveryJob, index: int) -> str | None:
        parent = job.queue_id
        done = self.journal.final_statuses({parent}, job.received_at)
        if (parent, index) in done:
            log.info("%s: its new mail (index %d) was made before a restart", parent, index)
            return "(made before)"
        for entry in list_spool(self.spool_root):
            found = parse_parent(entry.envelope.parent)
            if found is not None and found[0] == parent and found[1] == index:
                qid = entry.envelope.queue_id
                log.info("%s: its new mail %s was spooled before a restart", parent, qid)
                self._record(parent, index, list(entry.envelope.recipients), qid)
                return qid
        return None

    def may_process(self, job: DeliveryJob) -> bool:
        """True unless ``job`` is a copy its parent might still make again."""
        env = job.envelope
        found = parse_parent(env.parent) if env is not None else None
        if found is None:
            return True
        parent, index, path = found
        qid = job.queue_id
        with self._cond:
            # the parent's thread is between committing and recording: wait for it
            self._cond.wait_for(lambda: parent not in self._making, timeout=_WAIT)
            if qid in self._released:
                return True
        if not os.path.exists(path):
            return True  # the parent is finished: it will never run again
        done = self.journal.final_statuses({parent}, job.received_at)
        if (parent, index) in done:
            with self._cond:
                self._released.add(qid)
            return True
        return False

    def finished(self, qid: str) -> None:
        """``qid`` left the spool: forget it."""
        if self._released:
            with self._cond:
                self._released.discard(qid)
