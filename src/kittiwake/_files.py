"""Writing whole files the way kittiwake must: every byte, then ``fsync``.

``os.write`` may write less than it was given (a signal, a full pipe, a file-size
limit); every caller that means "all of it" goes through :func:`write_all`. Files a
crash must not leave half-written go through :func:`replace_file` (a temporary name,
``fsync``, ``rename``: a reader sees the old file or the new one, never a mix).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_file", "write_all", "write_durably"]

_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


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
