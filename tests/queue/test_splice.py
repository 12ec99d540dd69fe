"""Splicing a message being received (a message hook adds or replaces header fields):
the same bytes whether the message is still in memory or already in its file, and a
failed rewrite leaves the message as it was."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kittiwake._files import splice_into_new
from kittiwake.delivery.direct import MessageFile
from kittiwake.queue import Envelope, Spool

HEAD = b"Received: from a\r\nSubject: hi\r\n\r\n"
BODY = b"line\r\n" * 50


def _envelope(queue_id: str, size: int) -> Envelope:
    return Envelope(queue_id, "s@x.test", ("r@y.test",), "192.0.2.1", "h.test", 0.0, "SMTP", size)


@pytest.mark.parametrize("threshold", [1 << 20, 16], ids=["in memory", "in its file"])
def test_spool_writer_splice(tmp_path: Path, threshold: int) -> None:
    added = b"X-Added: yes\r\n"
    with Spool(tmp_path / "spool", memory_threshold=threshold) as spool:
        writer = spool.begin()
        writer.write(HEAD)
        writer.write(BODY)
        writer.splice(0, 0, added)  # before everything
        writer.splice(len(added), len(added) + len(b"Received: from a\r\n"), b"")  # a field out
        assert writer.size == len(added) + len(HEAD) - 18 + len(BODY)
        asyncio.run(writer.commit(_envelope(writer.queue_id, writer.size)))
        [entry] = spool.take_ready()
        with open(entry.data_path, "rb") as f:
            assert f.read() == added + b"Subject: hi\r\n\r\n" + BODY
        assert not [p for p in Path(entry.data_path).parent.iterdir() if p.suffix == ".splice"]


@pytest.mark.parametrize("threshold", [1 << 20, 16], ids=["in memory", "in its file"])
def test_lmtp_message_file_splice(tmp_path: Path, threshold: int) -> None:
    message = MessageFile("0N7VENGP0001", str(tmp_path / "0N7VENGP0001"), threshold)
    message.write(HEAD)
    message.write(BODY)
    message.splice(len(HEAD) - 2, len(HEAD) - 2, b"X-Late: 1\r\n")  # last field of the header
    message.write(b"end\r\n")  # writing goes on at the end of the rewritten file
    assert b"".join(message.chunks()) == HEAD[:-2] + b"X-Late: 1\r\n\r\n" + BODY + b"end\r\n"
    with pytest.raises(ValueError):
        message.splice(0, message.size + 1, b"")


def test_a_failed_rewrite_leaves_the_file_and_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "msg"
    path.write_bytes(b"abcdef")
    (tmp_path / "msg.splice").write_bytes(b"")  # the temporary name is taken: O_EXCL fails
    with pytest.raises(FileExistsError):
        splice_into_new(str(path), 1, 2, b"X")
    assert path.read_bytes() == b"abcdef"
    os.unlink(tmp_path / "msg.splice")
    # the old file cannot be read once the new one exists: the new one is removed again
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        splice_into_new(str(tmp_path / "dir"), 1, 2, b"X")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "msg"]
    os.rmdir(tmp_path / "dir")
    fd = splice_into_new(str(path), 1, 2, b"XY")
    try:
        os.write(fd, b"!")  # the descriptor is at the new file's end
    finally:
        os.close(fd)
    assert path.read_bytes() == b"aXYcdef!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msg"]
