"""RemoteDelivery's files beside the mails of its ``outgoing`` repository.

The on-disk format (read by ``kittiwake queue`` too; keep it compatible):

* ``<key>.eml`` / ``<key>.json``: the stored mail (:mod:`kittiwake.mailet.repository`).
* ``<key>.retry``: JSON ``{"attempts": N, "next": UNIX_TIME}``; no file: never tried,
  due now. Written to ``.<key>.retry.tmp``, fsynced, renamed.
* ``<key>.json`` is also the mail's lock: the process delivering it holds an exclusive
  ``flock`` on it for the whole attempt, as ``kittiwake queue`` does to change it. (Up to
  2026-11 a separate ``<key>.lock`` file was created for that; making and removing a
  file per mail cost more than the rest of the bookkeeping. A left-over ``.lock`` file
  is ignored, and removed with its mail.)
* ``.connections``: an empty file whose byte-range locks (``fcntl`` record locks, one
  byte per connection slot of a destination) count the connections each destination
  has open across every worker process (``maxConnectionsPerDomain``). Nothing is
  written in it; deleting it while no kittiwake runs is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any

from kittiwake.mailet.repository import MailRepository

__all__ = [
    "CONNECTIONS_FILE",
    "lock_mail",
    "priority_of",
    "read_retry",
    "remove_mail",
    "write_retry",
]

CONNECTIONS_FILE = ".connections"
#: James's MailPrioritySupport: attribute name, and the priority of a mail without it
_PRIORITY = "MAIL_PRIORITY"
_NORMAL = 5


def read_retry(repo: MailRepository, key: str) -> dict[str, Any]:
    """``KEY.retry`` as a dict ({} when absent or torn: due now)."""
    try:
        return dict(json.loads((repo.path / f"{key}.retry").read_bytes()))
    except (FileNotFoundError, ValueError):
        return {}


def write_retry(repo: MailRepository, key: str, state: dict[str, Any]) -> None:
    path = repo.path / f"{key}.retry"
    tmp = repo.path / f".{key}.retry.tmp"
    tmp.write_bytes(json.dumps(state).encode())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_mail(repo: MailRepository, key: str, *, retry: bool = True, sync: bool = True) -> None:
    """Remove a mail and its files; ``retry=False``: the caller holds the lock and saw
    no ``.retry`` file (none can appear meanwhile), so it is not looked for;
    ``sync=False``: see :meth:`MailRepository.remove`."""
    repo.remove(key, sync=sync)
    if retry:  # and a .lock left by an older version
        for suffix in (".retry", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                (repo.path / f"{key}{suffix}").unlink()


def lock_mail(repo: MailRepository, key: str) -> int | None:
    """An exclusive ``flock`` on ``<key>.json`` (the fd to close); None if another
    process holds it.

    Raises:
        KeyError: the mail is not there (any more).
    """
    path = repo.path / f"{key}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyError(key) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the lock is on the file we opened: still the mail's? (removed or stored
        # again by the holder before we got it)
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except BlockingIOError:
        os.close(fd)
        return None
    except FileNotFoundError:
        os.close(fd)
        raise KeyError(key) from None
    except BaseException:
        os.close(fd)
        raise
    if not same:
        os.close(fd)
        return None  # stored again meanwhile: the next sweep takes the new one
    return fd


def priority_of(repo: MailRepository, key: str) -> int:
    """James's ``MAIL_PRIORITY`` attribute of a stored mail (1 low .. 9 high; 5 without)."""
    try:
        meta = json.loads((repo.path / f"{key}.json").read_bytes())
        return int(meta.get("attributes", {}).get(_PRIORITY, _NORMAL))
    except (OSError, ValueError, TypeError, AttributeError):
        return _NORMAL
