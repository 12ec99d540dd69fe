"""What the spool runner hands a deliverer and what it gets back.

A deliverer is synchronous and does blocking I/O: the runner calls it from a worker
thread with a whole batch, so that it can share one ``fsync`` per directory and one
journal ``fsync`` among all the messages of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kittiwake.queue._envelope import Envelope

__all__ = ["Deliverer", "DeliveryJob", "Outcome", "Status", "Target"]


class Status(Enum):
    """The result of delivering a message to one recipient (Postfix's words)."""

    SENT = "sent"  # final: in the mailbox, durably
    FAILED = "failed"  # final: will never succeed (no such mailbox); bounce later
    DEFERRED = "deferred"  # temporary: try again later (disk full, I/O error)
    #: not final, not to retry: another part of the server has the recipient now and
    #: reports to the spool runner when it is done (RemoteDelivery's first attempt,
    #: made straight from the spool: :class:`kittiwake.queue.runner.Holds`)
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Target:
    """One recipient of a job."""

    #: the recipient's position in the envelope (its RCPT number, from 0)
    index: int
    #: the address as the client gave it
    recipient: str
    #: canonical mailbox address it maps to; None = no such mailbox
    mailbox: str | None


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """Deliver one spooled message to some of its recipients."""

    queue_id: str
    #: the spool data file: exactly the bytes the mailbox gets
    data_path: str
    #: envelope time (Unix seconds)
    received_at: float
    #: bytes in ``data_path``
    size: int
    #: an earlier attempt may have delivered some targets already (crash recovery):
    #: the deliverer must check before delivering, so nobody gets the message twice
    recovered: bool
    #: the recipients still to deliver
    targets: tuple[Target, ...]
    #: the spool envelope (sender, client, AUTH...), for the mailet container
    envelope: Envelope | None = None
    #: over quota is a final failure (5.2.2: LMTP, whose client bounces it); False: a
    #: deferral (4.2.2: the spool retries, and LocalDelivery then bounces it)
    quota_final: bool = False
    #: the data file's header block when the spool still had it in memory (a prefix
    #: of the file, for header matchers); None: read the file
    head: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened for one target."""

    index: int
    recipient: str
    status: Status
    #: RFC 3463 enhanced status code ("2.0.0", "5.1.1", "4.3.0", ...)
    dsn: str
    #: where it went (a Maildir path), or "" if nowhere
    location: str = ""
    #: why, for FAILED and DEFERRED; "" otherwise
    detail: str = ""
    #: the journal already held this final outcome from before a crash: nothing done now
    repeated: bool = False


class Deliverer(Protocol):
    """Delivers batches of jobs (blocking; called from a worker thread)."""

    def deliver(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
        """Deliver every job; return, per job, one :class:`Outcome` per target.

        Every SENT and FAILED outcome returned is durable (mailbox and journal
        fsynced) when this returns, so the caller may drop the spool entry.

        Raises:
            OSError: the journal could not be written; nothing may be assumed
                delivered (the caller retries later; delivery is idempotent).
        """
        ...
