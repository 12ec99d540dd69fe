"""The outgoing queue as the ``kittiwake queue`` commands see it: RemoteDelivery's
repositories (:mod:`kittiwake.mailet.remote`), read and changed from another process
while a server may be delivering from them.

A queued mail is ``KEY.eml`` + ``KEY.json`` (:class:`~kittiwake.mailet.repository.MailRepository`),
``KEY.retry`` (JSON: ``attempts`` made so far, ``next`` attempt as Unix time, and the
``error`` of the last attempt; no file: never tried, due now). ``KEY.json`` is also the
mail's lock: a delivering process holds ``flock(LOCK_EX)`` on it for the whole attempt,
from loading the mail to writing its new retry state or removing it (no separate lock
file: creating and removing one per mail was a large part of the relay's bookkeeping).

Every change made here takes the same lock first, without waiting: a mail being
delivered right now is never removed half-way, and its retry state is never written
from two places at once (the attempt's result would overwrite a flush, or a flush
would bring back a mail the attempt just finished). A locked mail is reported as such
and left alone. After locking, the locked file's inode is compared with the one at its
path: a delivery that finished in between removed the mail, and a lock on that orphan
would protect nothing.

Files created here get the owner of the repository directory, so that a server that
dropped root (``kittiwake`` user) can still read and replace them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kittiwake.mailet.remote_store import lock_mail, read_retry
from kittiwake.mailet.remote_store import remove_mail as remove_stored
from kittiwake.mailet.repository import MailRepository, RepositoryStore, StoredMail

__all__ = [
    "Locked",
    "OutgoingMail",
    "locked",
    "make_due",
    "outgoing_names",
    "queued",
    "read_retry",
    "remove_mail",
]


class Locked(Exception):
    """The mail is being delivered right now (another process holds the flock on ``KEY.json``)."""


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One mail waiting in an outgoing repository."""

    repository: str
    info: StoredMail
    attempts: int
    #: Unix time of the next attempt; 0: due now
    next_attempt: float
    last_error: str
    #: a process holds its lock: an attempt is under way
    delivering: bool


def outgoing_names(spec: Any) -> list[str]:
    """The ``outgoing`` repositories of every RemoteDelivery in a ``ContainerSpec``."""
    from kittiwake.mailet.repository import repository_name

    names: list[str] = []
    for processor in spec.processors:
        for mailet in processor.mailets:
            if mailet.class_name.rpartition(".")[2] != "RemoteDelivery":
                continue
            params = dict(mailet.params)
            raw = params.get("outgoing") or params.get("outgoingQueue") or "outgoing"
            name = repository_name(raw) if "/" in raw else raw
            if name not in names:
                names.append(name)
    return names


def queued(store: RepositoryStore, names: list[str]) -> Iterator[OutgoingMail]:
    """Every mail of the named repositories, oldest first within each."""
    for name in names:
        repo = store.get(name)
        for info in sorted(repo, key=lambda m: (m.stored_at, m.key)):
            retry = read_retry(repo, info.key)
            yield OutgoingMail(
                name,
                info,
                int(retry.get("attempts", 0)),
                float(retry.get("next", 0.0)),
                str(retry.get("error", "")),
                _held(repo, info.key),
            )


def _held(repo: MailRepository, key: str) -> bool:
    """Is the mail's lock (``KEY.json``) held? (A probe: a shared lock taken and let go
    at once.)"""
    try:
        fd = os.open(repo.path / f"{key}.json", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except PermissionError:
        return False  # not ours to probe; the list still shows the mail
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock
    return False


@contextlib.contextmanager
def locked(repo: MailRepository, key: str) -> Iterator[None]:
    """Hold the mail's lock (``KEY.json``, taken as RemoteDelivery takes it:
    :func:`~kittiwake.mailet.remote_store.lock_mail`) for the block.

    Raises:
        Locked: another process holds it, or the attempt that held it has just stored
            it again (try again).
        KeyError: no such mail (or it was delivered meanwhile).
    """
    if "/" in key or key.startswith(".") or not key:
        raise KeyError(key)
    fd = lock_mail(repo, key)
    if fd is None:
        raise Locked(key)
    try:
        repo.info(key)
        yield
    finally:
        os.close(fd)


def make_due(repo: MailRepository, key: str, now: float | None = None) -> dict[str, Any]:
    """Make a deferred mail due now (attempt count and last error kept): a running
    server's RemoteDelivery sees it at its next sweep (at most a second).

    Returns:
        The retry state as it was.

    Raises:
        Locked, KeyError: as :func:`locked`.
    """
    with locked(repo, key):
        before = read_retry(repo, key)
        if not before or float(before.get("next", 0.0)) <= (now or time.time()):
            return before  # due already: nothing to write
        state = dict(before)
        state["next"] = 0.0
        _write_retry(repo, key, state)
        return before


def remove_mail(repo: MailRepository, key: str) -> StoredMail:
    """Delete a mail from the queue for good, under its lock.

    Returns:
        What was removed.

    Raises:
        Locked, KeyError: as :func:`locked`.
    """
    with locked(repo, key):
        info = repo.info(key)
        remove_stored(repo, key)  # .json first: from here on the mail does not exist
        return info


def _write_retry(repo: MailRepository, key: str, state: dict[str, Any]) -> None:
    """As RemoteDelivery writes it: a temporary file, fsynced, renamed over."""
    path = repo.path / f"{key}.retry"
    tmp = repo.path / f".{key}.retry.cli.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _own_like_dir(fd, repo.path)
        os.write(fd, json.dumps(state).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(repo.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _own_like_dir(fd: int, directory: Path) -> None:
    """Run as root for a server that dropped to its own user: give the file that user."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0 or st.st_gid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)
