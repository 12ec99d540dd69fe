"""Local delivery into Maildirs at ``DATA/mail/<domain>/<local-part>/`` (tmp/new/cur),
readable by Dovecot and mutt as they are.

How a message gets into a mailbox, and why this way
---------------------------------------------------
The spool data file is already fsynced and holds exactly the bytes the mailbox gets
(:mod:`kittiwake.queue.spool` keeps the envelope elsewhere for this reason). So the fast
path is one ``link(spool file, <maildir>/new/<name>)`` per mailbox, then one ``fsync`` of
each ``new/`` directory touched by the batch. A link is atomic (readers never see a
partial file, so ``tmp/`` is not needed), copies nothing and costs about a tenth of
creating, writing, fsyncing and renaming a copy; the file's data needs no second
fsync. After the spool unlinks its name, the Maildir holds the only link. The file
keeps the spool file's mode, 0600.

(On a file system without a journal, as this dev box's ext4 is, the link count the
link adds reaches the disk with the inode, not with the ``new/`` fsync; after a power
loss, fsck reconciles it, exactly as it does for a classic Maildir rename that left
the ``tmp/`` name behind. With a journal, entry and count change atomically.)

When a link is impossible (``EXDEV``: the Maildirs are on another file system; or
``EPERM``/``EMLINK``), the message is copied the Maildir way: write ``tmp/<name>``
(``copy_file_range``, done in the kernel), ``fsync``, ``rename`` into ``new/``; the
mailbox remembers to copy from then on.

Never twice
-----------
The name is a function of the message only: ``<received secs>.K<queue id>.<host>,S=<size>``
(Maildir's ``time.unique.host``; ``S=`` lets Dovecot skip a ``stat``). So:

* a second link of the same message into the same mailbox fails with ``EEXIST``, which
  means "already delivered" (and the directory is fsynced again, in case the first
  attempt's fsync is what failed);
* a *recovered* job (one that may have been attempted before a crash) is first looked
  up in the journal (:mod:`.journal`); a recipient not found there is looked for in
  ``new/`` and in ``cur/``, where a reader such as Dovecot renames ``new/X`` to
  ``cur/X:2,<flags>``. Only normal operation skips these scans.

Quotas (:mod:`.quota`): a mailbox with a limit is checked and its ``maildirsize``
appended under the Maildir's lock, around the link; a message that does not fit is
refused for that mailbox only (``5.2.2`` when the job says over quota is final, as for
LMTP; else deferred ``4.2.2``). A message already present (an earlier attempt) is not
counted twice.

Two recipients that map to the same mailbox get one copy (as Postfix does).
Directories are created on demand, 0700, and their parents fsynced once, so that a
new mailbox survives a crash as well as the message in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kittiwake.delivery import quota
from kittiwake.delivery.base import DeliveryJob, Outcome, Status
from kittiwake.delivery.journal import Journal, JournalRecord
from kittiwake.delivery.quota_limits import Quotas
from kittiwake.storage._names import InvalidName, mailbox_parts

__all__ = ["MaildirDeliverer", "MaildirOwner", "maildir_name"]

# Link failures that mean "this file system will not link here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _safe_host(host: str) -> str:
    # Maildir: "/" and ":" are encoded as octal escapes; "," separates Dovecot's
    # S=/W= fields and "." separates the three parts of the base name.
    return (
        host.replace("\\", "\\134")
        .replace("/", "\\057")
        .replace(":", "\\072")
        .replace(",", "\\054")
        .replace(".", "\\056")
    ) or "localhost"


def maildir_name(queue_id: str, received_at: float, size: int, host: str) -> str:
    """The file name a message gets in every mailbox (deterministic, unique per message).

    Args:
        queue_id: the spool queue ID.
        received_at: envelope time, Unix seconds.
        size: bytes in the file.
        host: this host's name (escaped here as the Maildir convention asks).

    Returns:
        ``<secs>.K<queue id>.<host>,S=<size>``.
    """
    return _name(queue_id, received_at, size, _safe_host(host))


def _name(queue_id: str, received_at: float, size: int, safe_host: str) -> str:
    return f"{int(received_at)}.K{queue_id}.{safe_host},S={size}"


@dataclass(frozen=True, slots=True)
class MaildirOwner:
    """Owner, group and mode of what goes into Maildirs (``kittiwake.xml <maildir uid
    gid mode>``), for a Dovecot that reads them as another user or through a group.

    ``-1`` leaves the owner or group as the process makes it. Directories get ``mode``
    with a search bit for every read bit, plus setgid when a group is given (new
    entries then inherit the group, as shared Maildir setups expect). Only root may give
    a file to another user, so ``uid`` is in practice the user kittiwake runs as.
    """

    uid: int = -1
    gid: int = -1
    mode: int | None = None

    @property
    def dir_mode(self) -> int | None:
        if self.mode is None:
            return 0o2700 if self.gid != -1 else None
        mode = self.mode | ((self.mode & 0o444) >> 2)
        return mode | (0o2000 if self.gid != -1 else 0)

    @property
    def active(self) -> bool:
        return self.uid != -1 or self.gid != -1 or self.mode is not None

    def apply(self, path: str, *, directory: bool) -> None:
        """Give ``path`` this owner, group and mode (nothing when not configured)."""
        if self.uid != -1 or self.gid != -1:
            os.chown(path, self.uid, self.gid)
        mode = self.dir_mode if directory else self.mode
        if mode is not None:
            os.chmod(path, mode)


@dataclass(slots=True)
class _Maildir:
    path: str
    tmp: str
    new: str
    cur: str
    link_ok: bool = True


class MaildirDeliverer:
    """A :class:`~kittiwake.delivery.base.Deliverer` into Maildirs under ``mail_root``.

    Thread-safe enough for the runner: batches may run in several threads at once (the
    mailbox cache holds only idempotent facts; the journal has its own lock).
    """

    def __init__(self, mail_root: Path, journal: Journal, *, hostname: str | None = None) -> None:
        """Args:
        mail_root: ``DATA/mail``.
        journal: where outcomes are recorded.
        hostname: the host part of Maildir names (default: this host's name).
        """
        self.mail_root = mail_root
        self.journal = journal
        self._root = str(mail_root)
        self._host = _safe_host(hostname or socket.gethostname())
        self._boxes: dict[str, _Maildir] = {}
        self._create_lock = threading.Lock()
        #: set by the runtime from kittiwake.xml's <maildir>; None: 0700 dirs, 0600 files
        self.owner: MaildirOwner | None = None
        #: mailbox limits (kittiwake.xml <quota>, ``kittiwake quota set``); None: none
        self.quotas: Quotas | None = None

    @classmethod
    def in_data_dir(cls, data: Path, *, hostname: str | None = None) -> MaildirDeliverer:
        """The standard layout: Maildirs under ``DATA/mail``, journal in
        ``DATA/journal`` (one file per process).

        Raises:
            OSError: the journal cannot be created.
        """
        return cls(data / "mail", Journal(data / "journal"), hostname=hostname)

    def close(self) -> None:
        """Close the journal."""
        self.journal.close()

    # -- mailboxes -------------------------------------------------------------

    def _maildir(self, mailbox: str) -> _Maildir:
        box = self._boxes.get(mailbox)
        if box is None:
            domain, local = mailbox_parts(mailbox)  # refuses anything unsafe as a path
            path = os.path.join(self._root, domain, local)
            box = _Maildir(path, f"{path}/tmp", f"{path}/new", f"{path}/cur")
            # One creator at a time: a second thread must not use a directory whose
            # entry the first has made but not yet fsynced.
            with self._create_lock:
                self._create(box)
            self._boxes[mailbox] = box
        return box

    def _create(self, box: _Maildir) -> None:
        if os.path.isdir(box.new) and os.path.isdir(box.cur) and os.path.isdir(box.tmp):
            return
        # Create from the top, remembering the first directory we made: every directory
        # from its parent down must then be fsynced for the new entries to be durable.
        chain = [self._root, os.path.dirname(box.path), box.path]
        first_new: int | None = None
        parent = os.path.dirname(self._root)
        if not os.path.isdir(self._root):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        owner = self.owner
        for i, d in enumerate(chain):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            if owner is not None:
                owner.apply(d, directory=True)
            if first_new is None:
                first_new = i
        for sub in (box.tmp, box.new, box.cur):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700)
                if owner is not None:
                    owner.apply(sub, directory=True)
        to_sync = [box.path]
        if first_new is not None:
            to_sync = [parent, *chain][first_new:]
        for d in to_sync:
            _fsync_dir(d)

    # -- delivery --------------------------------------------------------------

    def deliver(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
        """Deliver a batch (blocking). See :class:`~kittiwake.delivery.base.Deliverer`.

        Raises:
            OSError: the journal could not be written.
        """
        journaled = self._journaled(jobs)
        listings: dict[str, set[str]] = {}
        touched: dict[str, list[tuple[int, int]]] = {}  # new/ dir -> (job, outcome) indexes
        results: list[list[Outcome]] = []
        mailboxes: list[list[str]] = []  # canonical mailbox per outcome, for the journal
        for j, job in enumerate(jobs):
            outcomes: list[Outcome] = []
            boxes: list[str] = []
            mailboxes.append(boxes)
            name = _name(job.queue_id, job.received_at, job.size, self._host)
            # mailbox -> outcome, so that two recipients sharing a mailbox get one copy
            done: dict[str, Outcome] = {}
            for target in job.targets:
                boxes.append(target.mailbox or "")
                previous = journaled.get((job.queue_id, target.index))
                if previous is not None:
                    outcomes.append(
                        Outcome(
                            target.index,
                            target.recipient,
                            previous,
                            "2.0.0" if previous is Status.SENT else "5.1.1",
                            repeated=True,
                        )
                    )
                    continue
                mailbox = target.mailbox
                if mailbox is None:
                    outcomes.append(
                        Outcome(
                            target.index,
                            target.recipient,
                            Status.FAILED,
                            "5.1.1",
                            detail="no such mailbox",
                        )
                    )
                    continue
                same = done.get(mailbox)
                if same is not None:
                    outcomes.append(
                        Outcome(
                            target.index,
                            target.recipient,
                            same.status,
                            same.dsn,
                            same.location,
                            same.detail,
                        )
                    )
                    if same.status is Status.SENT:
                        touched.setdefault(same.location + "/new", []).append(
                            (j, len(outcomes) - 1)
                        )
                    continue
                outcome = self._deliver_one(
                    job, target.index, target.recipient, mailbox, name, listings
                )
                done[mailbox] = outcome
                outcomes.append(outcome)
                if outcome.status is Status.SENT:
                    touched.setdefault(outcome.location + "/new", []).append((j, len(outcomes) - 1))
            results.append(outcomes)
        # One fsync per new/ directory makes every link of the batch into it durable.
        for new_dir, where in touched.items():
            try:
                _fsync_dir(new_dir)
            except OSError as exc:
                for j, k in where:
                    o = results[j][k]
                    results[j][k] = Outcome(
                        o.index,
                        o.recipient,
                        Status.DEFERRED,
                        "4.3.0",
                        o.location,
                        f"fsync: {exc.strerror}",
                    )
        now = time.time()
        self.journal.append(
            JournalRecord(now, job.queue_id, o.index, o.status, o.recipient, box, o.detail)
            for job, outcomes, boxes in zip(jobs, results, mailboxes, strict=True)
            for o, box in zip(outcomes, boxes, strict=True)
            if not o.repeated
        )
        return results

    def _journaled(self, jobs: Sequence[DeliveryJob]) -> dict[tuple[str, int], Status]:
        careful = [job for job in jobs if job.recovered]
        if not careful:
            return {}
        return self.journal.final_statuses(
            {job.queue_id for job in careful}, min(job.received_at for job in careful)
        )

    def _deliver_one(
        self,
        job: DeliveryJob,
        index: int,
        recipient: str,
        mailbox: str,
        name: str,
        listings: dict[str, set[str]],
    ) -> Outcome:
        try:
            box = self._maildir(mailbox)
        except InvalidName:
            return Outcome(
                index,
                recipient,
                Status.FAILED,
                "5.1.3",
                detail="mailbox name unusable as a directory",
            )
        except OSError as exc:
            return _deferred(index, recipient, "", exc)
        limit = self.quotas.limit_for(mailbox) if self.quotas is not None else None
        try:
            if job.recovered and self._present(box, job, listings):
                return Outcome(index, recipient, Status.SENT, "2.0.0", box.path)
            try:
                refused = self._place_counted(job, box, name, limit)
            except FileNotFoundError:
                # The mailbox directory was removed under us (a cached fact went stale):
                # recreate it once. A missing spool file is an error for the caller.
                if not os.path.exists(job.data_path):
                    raise
                self._boxes.pop(mailbox, None)
                box = self._maildir(mailbox)
                refused = self._place_counted(job, box, name, limit)
        except OSError as exc:
            return _deferred(index, recipient, box.path, exc)
        if refused is not None:
            final = job.quota_final
            status = Status.FAILED if final else Status.DEFERRED
            dsn = "5.2.2" if final else "4.2.2"
            return Outcome(index, recipient, status, dsn, box.path, refused.describe())
        return Outcome(index, recipient, Status.SENT, "2.0.0", box.path)

    def _place_counted(
        self, job: DeliveryJob, box: _Maildir, name: str, limit: quota.Limit | None
    ) -> quota.Usage | None:
        """Place the message; with a limit, under the quota lock, and only if it fits.
        Returns the usage that refused it, None once it is placed. No limit of ours
        (None): the limits of an existing ``maildirsize`` (Dovecot's) apply; an
        unlimited mailbox's file, if any, still gets its line (kept current for its
        readers)."""
        if limit is None:
            limit = quota.file_limit(box.path)
            if limit is None:  # no file: nothing to honour, nothing to count
                self._place(job.data_path, box, name)
                return None
        if not limit:
            if self._place(job.data_path, box, name):
                quota.add(box.path, job.size)
            return None
        with quota.locked(box.path):
            used = quota.usage(box.path, limit, self._on_create)
            if not used.allows(job.size):
                if os.path.exists(f"{box.new}/{name}"):
                    return None  # an earlier attempt placed (and counted) it
                return used
            if self._place(job.data_path, box, name):
                quota.add(box.path, job.size)
        return None

    def _on_create(self, path: str) -> None:
        if self.owner is not None:
            self.owner.apply(path, directory=False)

    def quota_usage(self, mailbox: str) -> quota.Usage | None:
        """The usage of ``mailbox`` against its limit, None if it has no limit (blocking:
        may rebuild ``maildirsize``, under the Maildir's lock).

        Raises:
            OSError: the Maildir cannot be read.
        """
        limit = self.quotas.limit_for(mailbox) if self.quotas is not None else None
        try:
            return quota.mailbox_usage(self._root, mailbox, limit, self._on_create)
        except InvalidName:
            return None

    def _present(self, box: _Maildir, job: DeliveryJob, listings: dict[str, set[str]]) -> bool:
        """True if a previous attempt put this message in ``box`` (new/ or cur/)."""
        keys = listings.get(box.path)
        if keys is None:
            keys = set()
            for sub in (box.new, box.cur):
                with os.scandir(sub) as it:
                    for entry in it:
                        # "<secs>.K<qid>.<host>,S=..[:2,flags]" -> "<secs>.K<qid>"; the host
                        # part is ignored in case the host name changed since.
                        head = entry.name.split(".", 2)
                        if len(head) == 3:
                            keys.add(f"{head[0]}.{head[1]}")
            listings[box.path] = keys
        return f"{int(job.received_at)}.K{job.queue_id}" in keys

    def _place(self, src: str, box: _Maildir, name: str) -> bool:
        """Put the message into ``new/``; False if it was there already."""
        dst = f"{box.new}/{name}"
        owner = self.owner
        if owner is not None:
            # The link shares the spool file's inode: set owner and mode before it
            # becomes visible in new/ (the spool directory itself stays 0700).
            owner.apply(src, directory=False)
        if box.link_ok:
            try:
                os.link(src, dst)
                return True
            except FileExistsError:
                return False  # this very message, delivered by an earlier attempt
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                box.link_ok = False
        if os.path.exists(dst):
            return False
        _copy_into(src, f"{box.tmp}/{name}", dst, owner)
        return True


def _copy_into(src: str, tmp: str, dst: str, owner: MaildirOwner | None = None) -> None:
    """Copy ``src`` to ``tmp``, fsync, rename to ``dst`` (the classic Maildir write)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # O_TRUNC: a tmp file left by a crash mid-copy is simply overwritten.
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if owner is not None and (owner.uid != -1 or owner.gid != -1):
                os.fchown(fd_out, owner.uid, owner.gid)
            if owner is not None and owner.mode is not None:
                os.fchmod(fd_out, owner.mode)
            remaining = os.fstat(fd_in).st_size
            while remaining > 0:
                try:
                    n = os.copy_file_range(fd_in, fd_out, remaining)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                        raise
                    n = os.sendfile(fd_out, fd_in, None, remaining)
                if n == 0:
                    break
                remaining -= n
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
        os.rename(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd_in)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _deferred(index: int, recipient: str, location: str, exc: OSError) -> Outcome:
    # Disk full, quota, I/O errors: the message stays in the spool and is retried.
    code = "4.2.2" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "4.3.0"
    return Outcome(index, recipient, Status.DEFERRED, code, location, exc.strerror or str(exc))
