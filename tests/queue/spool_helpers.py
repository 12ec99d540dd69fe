"""Helpers shared by the spool and runner tests (and the subprocesses they start)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from kittiwake.queue import Envelope, Spool

TRACE = b"Return-Path: <sender@remote.test>\nReceived: from client.test by mx.test; today\n"


def body(token: str, size: int = 2048) -> bytes:
    """A message carrying ``token`` in a header, about ``size`` bytes long."""
    head = TRACE + f"X-Token: {token}\nSubject: test\n\n".encode()
    return head + b"x" * max(0, size - len(head) - 1) + b"\n"


async def commit(
    spool: Spool,
    data: bytes,
    recipients: Sequence[str] = ("alice@local.test",),
    sender: str = "sender@remote.test",
) -> str:
    """Spool one message; return its queue ID once it is durable."""
    writer = spool.begin()
    try:
        for i in range(0, len(data), 4096):
            writer.write(data[i : i + 4096])
        await writer.commit(
            Envelope(
                writer.queue_id,
                sender,
                tuple(recipients),
                "192.0.2.1",
                "client.test",
                time.time(),
                "ESMTP",
                writer.size,
            )
        )
    except BaseException:
        writer.abort()
        raise
    return writer.queue_id


def spool_files(root: Path) -> list[str]:
    """Message data files left in a spool (named by queue IDs)."""
    from kittiwake.queue import is_queue_id

    if not root.exists():
        return []
    return sorted(p.name for p in root.rglob("*") if p.is_file() and is_queue_id(p.name))


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a tiny tmpfs at ``path`` (needs root); skip the test if that is impossible."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a tiny tmpfs for ENOSPC needs root (mount -t tmpfs)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for ENOSPC: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
