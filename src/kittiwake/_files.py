"""Writing whole files the way kittiwake must: every byte, then ``fsync``.

``os.write`` may write less than it was given (a signal, a full pipe, a file-size
limit); every caller that means "all of it" goes through :func:`write_all`. Files a
crash must not leave half-written go through :func:`replace_file` (a temporary name,
``fsync``, ``rename``: a reader sees the old file or the new one, never a mix).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["O_NEW", "replace_file", "splice_into_new", "syncfs", "write_all", "write_durably"]

_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
#: a new data file: never reuse a name (it is a queue ID), never leak into a child process
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at ``fd``'s offset.

    Raises:
        OSError: the write failed (part of ``data`` may be written).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_durably(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create (or truncate) ``path``, write ``data`` and ``fsync`` it; not atomic.

    Raises:
        OSError: not written.
    """
    fd = os.open(path, _O_CREATE, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def splice_into_new(path: str, start: int, end: int, data: bytes) -> int:
    """Replace bytes ``start:end`` of the file at ``path`` with ``data``: the result is
    written to a new file that then takes ``path``'s name (a reader of the name sees the
    old bytes or the new, never a mix). Returns a descriptor open for writing at the new
    file's end; the caller closes its descriptor of the old one.

    Raises:
        OSError: not rewritten; ``path`` is unchanged and nothing is left beside it.
    """
    tmp = path + ".splice"
    fd = os.open(tmp, O_NEW, 0o600)
    try:
        with open(path, "rb") as old:
            write_all(fd, old.read(start))
            write_all(fd, data)
            old.seek(end)
            while chunk := old.read(1 << 20):
                write_all(fd, chunk)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return fd


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with a file holding ``data``, mode ``mode`` whatever the umask,
    atomically (a temporary name in the same directory, ``fsync``, ``rename``). The
    directory is not fsynced: the caller does that when the new name must survive a
    crash.

    Raises:
        OSError: not written; ``path`` is unchanged.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, _O_CREATE, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` from the C library (Linux 2.6.39, glibc 2.14), or None where there
    is none. Python's ``os`` module does not offer it."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)  # a CDLL call releases the GIL
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int

    def call(fd: int) -> None:
        if func(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")

    return call


#: ``syncfs(fd)``: every dirty page and inode of the filesystem holding ``fd`` is on
#: stable storage when it returns (the disk's write cache flushed, as by ``fsync``), and
#: a write-back error on that filesystem since ``fd`` was opened is raised as OSError
#: (Linux 5.8 and later). None where the C library has no ``syncfs``.
syncfs: Callable[[int], None] | None = _load_syncfs()
