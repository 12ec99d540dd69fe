"""Mail repositories: where mails that are not delivered are kept (error,
address-error, relay-denied, relay-limit-exceeded, ...), under ``DATA/repositories/``.

A James repository URL (``file://var/mail/error/``, ``cassandra://var/mail/error/``)
names a repository; kittiwake keeps every one as files whatever the protocol, under the
path without ``var/mail/`` (``DATA/repositories/error/``).

A stored mail is two files named by its key: ``<key>.eml`` (the message) and
``<key>.json`` (envelope, state, error message, attributes). Each is written to a
temporary name, fsynced and renamed; the ``.json`` last, so a mail exists once its
``.json`` does, and the directory is fsynced before :meth:`MailRepository.store`
returns. The key is a function of the mail (its name, state and recipients), so
storing the same mail again after a crash overwrites it instead of keeping two.

Group commit (:func:`deferred_sync`): the mailet container processes a batch of spool
entries in one thread, and the spool entries go only after the whole batch. Inside
``with deferred_sync():`` a ``store`` in that thread writes and renames its files but
leaves the fsyncs to the end of the block, where every file written is fsynced (several
at once, so the file system's journal commits them together) and then each directory
once. Until then the mail is durable as its spool entry, which is removed only after
the block: a crash before the end processes it again and, the key being deterministic,
stores it over the half-written copy. A message the mailets did not change is
hard-linked from its spool file (fsynced already) instead of being written again (it
may then share its inode, owner and mode with the Maildir copies of the same message,
``<maildir uid gid mode>``; the repository directory stays 0700, and nobody writes any
of these files in place).
A spool file that starts with the session's hidden ``Delivered-To`` is linked too; the
``.json`` then says how many bytes of the ``.eml`` to skip (``"skip"``), since that
field is not part of the stored message.
RemoteDelivery may send a mail stored this way before the block ends; its files are then
gone by the flush, which skips them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kittiwake._files import write_all
from kittiwake.mailet.api import Mail
from kittiwake.mailet.message import Message

__all__ = [
    "MailRepository",
    "RepositoryStore",
    "StoredMail",
    "deferred_sync",
    "repository_name",
]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def repository_name(url: str) -> str:
    """``file://var/mail/error/`` -> ``error``; ``file://a/b/`` -> ``a-b``."""
    _, sep, path = url.partition("://")
    if not sep:
        path = url
    path = path.strip("/")
    for prefix in ("var/mail/", "mail/"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    name = _SAFE.sub("-", path.replace("/", "-")).strip("-.")
    return name or "default"


@dataclass(frozen=True, slots=True)
class StoredMail:
    """One mail in a repository, as listed."""

    key: str
    name: str
    sender: str | None
    recipients: tuple[str, ...]
    state: str
    error_message: str | None
    stored_at: float
    size: int


class MailRepository:
    """One repository directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.path = root / name

    def _ensure(self) -> None:
        if not self.path.is_dir():
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            _fsync_dir(self.path.parent)

    @staticmethod
    def key_for(mail: Mail) -> str:
        """The deterministic key of ``mail`` (name, state, recipients)."""
        digest = hashlib.sha1(
            "\0".join([mail.state, *mail.recipients]).encode("utf-8", "surrogateescape")
        ).hexdigest()[:10]
        return f"{_SAFE.sub('_', mail.name)}-{digest}"

    def store(self, mail: Mail) -> str:
        """Store ``mail`` durably (*blocking*); returns its key.

        Raises:
            OSError: it could not be written.
        """
        self._ensure()
        key = self.key_for(mail)
        pending: _Pending | None = getattr(_deferred, "pending", None)
        message = mail.message
        skip = 0
        if pending is not None and not message.modified and message.path is not None:
            eml = self.path / f"{key}.eml"
            if _link_file(message.path, eml):
                pending.dirs.add(self.path)  # its data was fsynced by the spool
                # a single-recipient spool file may start with the session's hidden
                # Delivered-To (Message hides it): it is not part of the stored
                # message (a relayed copy must not carry it: the destination's
                # Postfix would take it for a forwarding loop); "skip" says so
                if message.delivered_to:
                    message.header_bytes()  # reads the file: is the field there?
                skip = message.file_size - message.size
            else:
                _write_file(eml, message.as_bytes(), pending)
        else:
            _write_file(self.path / f"{key}.eml", message.as_bytes(), pending)
        meta = {
            "name": mail.name,
            "sender": mail.sender,
            "recipients": mail.recipients,
            "state": mail.state,
            "error_message": mail.error_message,
            "remote_addr": mail.remote_addr,
            "remote_host": mail.remote_host,
            "auth_user": mail.auth_user,
            "received_at": mail.received_at,
            "stored_at": time.time(),
            "attributes": {k: v for k, v in mail.attributes.items() if _jsonable(v)},
        }
        if skip:
            meta["skip"] = skip
        _write_file(self.path / f"{key}.json", json.dumps(meta).encode(), pending)
        if pending is None:
            _fsync_dir(self.path)
        return key

    def keys(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json"))

    def __len__(self) -> int:
        return len(self.keys())

    def _meta(self, key: str) -> dict[str, Any]:
        if "/" in key or key.startswith("."):
            raise KeyError(key)
        try:
            return dict(json.loads((self.path / f"{key}.json").read_bytes()))
        except FileNotFoundError:
            raise KeyError(key) from None

    def info(self, key: str) -> StoredMail:
        """Raises: KeyError: no such mail."""
        meta = self._meta(key)
        try:
            size = (self.path / f"{key}.eml").stat().st_size - _skip(meta)
        except FileNotFoundError:
            size = 0
        return StoredMail(
            key,
            str(meta.get("name", key)),
            meta.get("sender"),
            tuple(meta.get("recipients", ())),
            str(meta.get("state", "")),
            meta.get("error_message"),
            float(meta.get("stored_at", 0.0)),
            size,
        )

    def __iter__(self) -> Iterator[StoredMail]:
        for key in self.keys():
            with contextlib.suppress(KeyError):
                yield self.info(key)

    def message_bytes(self, key: str) -> bytes:
        """Raises: KeyError: no such mail."""
        skip = _skip(self._meta(key))
        data = (self.path / f"{key}.eml").read_bytes()
        return data[skip:] if skip else data

    def load(self, key: str) -> Mail:
        """The stored mail, as a :class:`Mail` (message in memory).

        Raises:
            KeyError: no such mail.
        """
        meta = self._meta(key)
        data = (self.path / f"{key}.eml").read_bytes()
        skip = _skip(meta)
        if skip:
            data = data[skip:]
        return Mail(
            name=str(meta.get("name", key)),
            sender=meta.get("sender"),
            recipients=list(meta.get("recipients", ())),
            message=Message(None, len(data), data),
            state=str(meta.get("state", "root")),
            remote_addr=str(meta.get("remote_addr", "127.0.0.1")),
            remote_host=str(meta.get("remote_host", "localhost")),
            auth_user=meta.get("auth_user"),
            attributes=dict(meta.get("attributes", {})),
            error_message=meta.get("error_message"),
            received_at=float(meta.get("received_at", 0.0)),
        )

    def remove(self, key: str, *, sync: bool = True) -> bool:
        """Delete a mail (``.json`` first: it is what makes the mail exist); the
        directory fsync is shared with concurrent removals (:class:`_DirSync`).

        Args:
            sync: wait for the directory fsync. False (a mail sent, RemoteDelivery):
                it runs within :data:`_LAZY_SYNC` seconds, shared with the removals
                meanwhile. Only a power loss in that window can bring the mail back
                (to be sent again: delivery is at least once anyway); a crash of the
                process cannot, and nothing accepted can be lost by it.
        """
        if "/" in key or key.startswith("."):
            return False
        try:
            (self.path / f"{key}.json").unlink()
        except FileNotFoundError:
            return False
        (self.path / f"{key}.eml").unlink(missing_ok=True)
        if sync:
            _dir_sync(self.path).sync()
        else:
            _dir_sync(self.path).soon()
        return True


class RepositoryStore:
    """Every repository under ``DATA/repositories`` (James ``MailRepositoryStore``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._repos: dict[str, MailRepository] = {}

    def get(self, url_or_name: str) -> MailRepository:
        name = repository_name(url_or_name) if "/" in url_or_name else url_or_name
        repo = self._repos.get(name)
        if repo is None:
            repo = self._repos[name] = MailRepository(self.root, name)
        return repo

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []


def _skip(meta: dict[str, Any]) -> int:
    """Bytes at the start of the ``.eml`` that are not the message (a linked spool
    file's hidden Delivered-To)."""
    try:
        return max(int(meta.get("skip", 0)), 0)
    except (TypeError, ValueError):
        return 0


def _jsonable(value: object) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


class _Pending:
    """What a thread's :func:`deferred_sync` block still has to fsync."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.dirs: set[Path] = set()


_deferred = threading.local()
#: seconds within which a removal with ``sync=False`` is made durable
_LAZY_SYNC = 0.2
#: fsyncs of one flush run in parallel: the journal commits them together
_SYNC_THREADS = 8
_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Group commit of :meth:`MailRepository.store` in this thread (see the module
    docstring): everything stored in the block is durable when it ends.

    Raises:
        OSError: an fsync failed (then nothing stored in the block may be counted on).
    """
    if getattr(_deferred, "pending", None) is not None:
        yield  # nested: the outer block flushes
        return
    pending = _deferred.pending = _Pending()
    try:
        yield
    finally:
        _deferred.pending = None
        _flush(pending)


def _flush(pending: _Pending) -> None:
    global _sync_pool
    if len(pending.files) > 1:
        with _sync_pool_lock:
            if _sync_pool is None:
                _sync_pool = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="kw-repo-sync")
        list(_sync_pool.map(_fsync_path, pending.files))
    else:
        for path in pending.files:
            _fsync_path(path)
    for directory in pending.dirs:
        _fsync_dir(directory)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # delivered and removed meanwhile: nothing left to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_file(source: str, path: Path) -> bool:
    """Hard-link ``source`` (an fsynced spool file, never written again) as ``path``;
    False when links are not possible here (another file system)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOENT):
            return False
        raise
    os.replace(tmp, path)
    return True


def _write_file(path: Path, data: bytes, pending: _Pending | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        if pending is None:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if pending is not None:
        pending.files.append(path)
        pending.dirs.add(path.parent)


class _DirSync:
    """Group commit of one directory's fsync: a caller whose change (unlink, rename) is
    done asks for a flush and returns once a flush that *started after its request* has
    completed; while one runs, the requests that arrive meanwhile wait and share the
    next one. Delivery threads removing sent mails at once then cost one fsync per
    round instead of one each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0
        self._completed = 0
        self._running = False
        self._timer: threading.Timer | None = None

    def soon(self) -> None:
        """A flush within :data:`_LAZY_SYNC` seconds, without waiting for it."""
        with self._cond:
            if self._timer is not None:
                return  # the pending one starts after this change: it covers it
            self._timer = threading.Timer(_LAZY_SYNC, self._lazy)
            self._timer.daemon = True
            self._timer.start()

    def _lazy(self) -> None:
        with self._cond:
            self._timer = None
        with contextlib.suppress(OSError):  # the next removal's flush tries again
            self.sync()

    def sync(self) -> None:
        """Raises: OSError: the fsync this call ran failed."""
        with self._cond:
            self._requested += 1
            mine = self._requested
            while self._completed < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                upto = self._requested
                self._cond.release()
                ok = False
                try:
                    _fsync_dir(self.path)
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._completed = max(self._completed, upto)
                    self._cond.notify_all()


_dir_syncs: dict[Path, _DirSync] = {}
_dir_syncs_lock = threading.Lock()


def _dir_sync(path: Path) -> _DirSync:
    with _dir_syncs_lock:
        found = _dir_syncs.get(path)
        if found is None:
            found = _dir_syncs[path] = _DirSync(path)
        return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
