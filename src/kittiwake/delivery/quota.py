"""Mailbox quotas, the Maildir++ way: the ``maildirsize`` file that Dovecot, Courier,
maildrop and Exim read and write (courier-mta.org/imap/README.maildirquota.html).

The file
--------
``<Maildir>/maildirsize``: a first line with the limits (``<bytes>S,<messages>C``,
either part may be left out), then one line per change, ``<bytes> <messages>``
(negative when mail was removed). The usage is the sum of those lines. A deliverer
appends ``<size> 1`` after writing a message: one ``write`` on an ``O_APPEND`` file,
atomic against other appenders (Dovecot's expunges, other kittiwake processes).

The file is rebuilt from the Maildir itself (every ``new/`` and ``cur/``, of the
INBOX and of every ``.Folder``: Dovecot's default, which counts Trash too; sizes from
the ``,S=`` in file names, else ``stat``) when it is missing, when its limits are
not the ones configured here, when it grew past 5120 bytes, or when the mailbox looks
full and the file is older than 15 minutes (a client may have removed mail without
writing a line): the rules of the specification, and Dovecot's
(``MAILDIRSIZE_STALE_SECS``). The new file is written in ``tmp/`` and renamed over
the old one.

Sharing with Dovecot
--------------------
Kittiwake writes the limits it enforces into the header. A Dovecot with
``quota = maildir`` and no ``quota_rule`` takes its limits from that header, so IMAP
clients see the same quota (``GETQUOTAROOT``) and Dovecot's own deliveries and
expunges keep the same file up to date. Configure limits in one place only: if
Dovecot has ``quota_rule``s too, each rewrites the other's header.

Concurrency
-----------
Check and append happen under an exclusive ``flock`` of the Maildir directory, taken
by every kittiwake thread and worker process that delivers into it, so concurrent
deliveries can never together exceed the limit. Dovecot does not take that lock; its
appends stay atomic, and a message it delivers at the same instant can overshoot by
that one message, as the specification accepts.

Where limits come from (:class:`~kittiwake.delivery.quota_limits.Quotas`): a per-user
override (``kittiwake quota set``, kept in ``DATA/quota.db``), else the default of
``kittiwake.xml``'s ``<quota>``, else the limits of an existing ``maildirsize`` header.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kittiwake.storage._names import mailbox_parts

__all__ = [
    "MAILDIRSIZE",
    "Limit",
    "Usage",
    "add",
    "batch_memo",
    "file_limit",
    "format_size",
    "locked",
    "mailbox_usage",
    "recalculate",
    "usage",
]

log = logging.getLogger("kittiwake.delivery")

MAILDIRSIZE = "maildirsize"
#: past this size the file is rebuilt (the specification's figure)
_MAX_FILE = 5120
#: a full mailbox's file older than this is rebuilt (Dovecot MAILDIRSIZE_STALE_SECS)
_STALE = 15 * 60
_SIZE_IN_NAME = re.compile(r",S=(\d+)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Limit:
    """A mailbox's limits; 0 means no limit for that resource."""

    storage: int = 0  # bytes
    messages: int = 0

    def __bool__(self) -> bool:
        return bool(self.storage or self.messages)

    def header(self) -> str:
        """The ``maildirsize`` first line (without the newline)."""
        parts = []
        if self.storage:
            parts.append(f"{self.storage}S")
        if self.messages:
            parts.append(f"{self.messages}C")
        return ",".join(parts)

    @classmethod
    def from_header(cls, line: str) -> Limit:
        """Read a header such as ``1073741824S,1000C`` (unknown parts are ignored)."""
        storage = messages = 0
        for part in line.strip().split(","):
            part = part.strip()
            if part[:-1].isdigit():
                if part.endswith("S"):
                    storage = int(part[:-1])
                elif part.endswith("C"):
                    messages = int(part[:-1])
        return cls(storage, messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a mailbox holds, by its ``maildirsize``, against its limit."""

    storage: int
    messages: int
    limit: Limit

    def allows(self, size: int, count: int = 1) -> bool:
        """A message of ``size`` bytes fits (Courier's and Dovecot's rule: the usage
        after the delivery must not exceed the limit)."""
        lim = self.limit
        if lim.storage and self.storage + size > lim.storage:
            return False
        return not (lim.messages and self.messages + count > lim.messages)

    @property
    def full(self) -> bool:
        """Not even an empty message fits (what RCPT can know before the text)."""
        lim = self.limit
        return bool(
            (lim.storage and self.storage >= lim.storage)
            or (lim.messages and self.messages >= lim.messages)
        )

    def describe(self) -> str:
        lim = self.limit
        parts = []
        if lim.storage:
            parts.append(f"{format_size(self.storage)} of {format_size(lim.storage)}")
        if lim.messages:
            parts.append(f"{self.messages} of {lim.messages} messages")
        return "over quota: " + ", ".join(parts) + " used"


def format_size(n: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


@contextlib.contextmanager
def locked(maildir: str) -> Iterator[None]:
    """Hold the Maildir's quota lock: an exclusive ``flock`` of its directory (one
    per open, so threads of one process exclude each other too).

    Raises:
        OSError: the directory cannot be opened (``FileNotFoundError`` if it is gone).
    """
    fd = os.open(maildir, _DIR_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def usage(
    maildir: str,
    limit: Limit,
    on_create: Callable[[str], None] | None = None,
    *,
    write: bool = True,
) -> Usage:
    """The Maildir's usage by its ``maildirsize``, rebuilt first when the rules say
    so (see the module doc). Call with :func:`locked` held when ``write``.

    Args:
        on_create: called with the path of a rebuilt file before it is renamed into
            place (ownership and mode for Dovecot).
        write: False: count without writing anything (``kittiwake quota show``, which
            may run as another user than the server).

    Raises:
        OSError: the file exists but cannot be read.
    """
    path = os.path.join(maildir, MAILDIRSIZE)

    def rebuild() -> Usage:
        return recalculate(maildir, limit, on_create, write=write)

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return rebuild()
    if len(data) > _MAX_FILE:
        return rebuild()
    lines = data.decode("ascii", "replace").split("\n")
    if Limit.from_header(lines[0]) != limit:
        return rebuild()
    storage = messages = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) == 2:
            try:
                storage += int(fields[0])
                messages += int(fields[1])
            except ValueError:
                return rebuild()
    found = Usage(max(storage, 0), max(messages, 0), limit)
    if found.full and time.time() - st.st_mtime > _STALE:
        return rebuild()
    return found


_memo = threading.local()


@contextlib.contextmanager
def batch_memo() -> Iterator[None]:
    """Within the block, in this thread, :func:`file_limit` reads each Maildir's
    header once: a delivery batch asks twice per message (LocalDelivery's quota check,
    then the delivery itself), and for a mailbox with no limit of kittiwake's the
    answer is nearly always an ``open`` failing with ENOENT. A ``maildirsize`` another
    program creates during the batch (a few milliseconds) applies from the next one,
    as it would had it come a moment later. Kittiwake never writes one for a mailbox
    whose limits it reads from the file (no file, no limit: nothing to count)."""
    if getattr(_memo, "limits", None) is not None:
        yield  # nested: the outer block's
        return
    _memo.limits = {}
    try:
        yield
    finally:
        _memo.limits = None


def file_limit(maildir: str) -> Limit | None:
    """The limits in the Maildir's ``maildirsize`` header, None if there is no file:
    when kittiwake has no limit of its own for a mailbox, it honours (and keeps
    counting for) the limits another program wrote there (Dovecot's ``quota_rule``,
    Courier's ``maildirmake -q``). Read once per :func:`batch_memo` block.

    Raises:
        OSError: the file exists but cannot be read.
    """
    memo: dict[str, Limit | None] | None = getattr(_memo, "limits", None)
    if memo is None:
        return _read_file_limit(maildir)
    try:
        return memo[maildir]
    except KeyError:
        found = memo[maildir] = _read_file_limit(maildir)
        return found


def _read_file_limit(maildir: str) -> Limit | None:
    try:
        with open(os.path.join(maildir, MAILDIRSIZE), "rb") as f:
            first = f.readline(256)
    except FileNotFoundError:
        return None
    return Limit.from_header(first.decode("ascii", "replace"))


def mailbox_usage(
    mail_root: str,
    mailbox: str,
    limit: Limit | None,
    on_create: Callable[[str], None] | None = None,
    *,
    write: bool = True,
) -> Usage | None:
    """The usage of ``mailbox`` (``DATA/mail/<domain>/<local>``) against ``limit``
    (None: the file's own, :func:`file_limit`), taking the Maildir's lock when
    ``write``; a Maildir not created yet holds nothing. None: no limit applies.

    Raises:
        InvalidName: the mailbox name is unusable as a directory.
        OSError: the Maildir cannot be read.
    """
    domain, local = mailbox_parts(mailbox)
    path = os.path.join(mail_root, domain, local)
    if limit is None:
        limit = file_limit(path)
    if not limit:
        return None
    if not os.path.isdir(os.path.join(path, "tmp")):
        return Usage(0, 0, limit)
    if not write:
        return usage(path, limit, write=False)
    with locked(path):
        return usage(path, limit, on_create)


def recalculate(
    maildir: str,
    limit: Limit,
    on_create: Callable[[str], None] | None = None,
    *,
    write: bool = True,
) -> Usage:
    """Count the Maildir's messages and (``write``) put a fresh ``maildirsize`` in
    place (through ``tmp/``, renamed). Call with :func:`locked` held."""
    storage = messages = 0
    folders = [maildir]
    with contextlib.suppress(FileNotFoundError), os.scandir(maildir) as it:
        folders += [e.path for e in it if e.name.startswith(".") and e.is_dir()]
    for folder in folders:
        for sub in ("new", "cur"):
            try:
                it = os.scandir(os.path.join(folder, sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    m = _SIZE_IN_NAME.search(entry.name)
                    if m is not None:
                        size = int(m.group(1))
                    else:
                        try:
                            size = entry.stat().st_size
                        except FileNotFoundError:
                            continue  # removed meanwhile
                    storage += size
                    messages += 1
    if not write:
        return Usage(storage, messages, limit)
    text = f"{limit.header()}\n{storage} {messages}\n".encode("ascii")
    tmp = os.path.join(
        maildir,
        "tmp",
        f"{int(time.time())}.P{os.getpid()}T{threading.get_ident()}."
        f"{socket.gethostname().replace('/', '_')}.maildirsize",
    )
    with contextlib.suppress(OSError):  # no tmp/: usage still known, file left as is
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        try:
            if on_create is not None:
                on_create(tmp)
            os.rename(tmp, os.path.join(maildir, MAILDIRSIZE))
        except OSError:
            os.unlink(tmp)
            raise
    return Usage(storage, messages, limit)


def add(maildir: str, size: int, count: int = 1) -> None:
    """Record a delivery (or, negative, a removal): one atomic append. Never raises:
    the message is in the mailbox already, and a line that could not be written (a
    missing or unwritable file) only leaves the usage low until the next rebuild
    (a missing file is rebuilt at the next check, counting this message)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(maildir, MAILDIRSIZE), flags)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("%s: cannot append to %s: %s", maildir, MAILDIRSIZE, exc)
        return
    try:
        os.write(fd, f"{size} {count}\n".encode("ascii"))
    except OSError as exc:
        log.warning("%s: cannot append to %s: %s", maildir, MAILDIRSIZE, exc)
    finally:
        os.close(fd)
