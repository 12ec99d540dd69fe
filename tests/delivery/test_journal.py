"""The delivery journal: durable appends, lookups across writers, torn lines."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from kittiwake.delivery import Journal, JournalRecord, Status

NOW = time.time()


def rec(qid: str, index: int, status: Status, rcpt: str = "a@x.test") -> JournalRecord:
    return JournalRecord(NOW, qid, index, status, rcpt, "a@x.test", "")


def test_append_and_lookup(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal", name="00")
    j.append([rec("Q1", 0, Status.SENT), rec("Q1", 1, Status.FAILED), rec("Q2", 0, Status.SENT)])
    j.append([rec("Q3", 0, Status.DEFERRED)])  # not final: not reported
    assert j.final_statuses(["Q1", "Q3"], NOW - 10) == {
        ("Q1", 0): Status.SENT,
        ("Q1", 1): Status.FAILED,
    }
    assert stat.S_IMODE(j.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "journal").stat().st_mode) == 0o700
    j.close()


def test_lines_are_readable_and_escaped(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal")
    j.append([JournalRecord(NOW, "Q1", 0, Status.FAILED, 'a\tb"\n@x.test', "", "why\\not")])
    [line] = j.path.read_bytes().splitlines()
    fields = line.split(b"\t")
    assert fields[1:4] == [b"Q1", b"0", b"failed"]
    assert fields[4] == b'a\\tb"\\n@x.test'
    assert fields[6] == b"why\\\\not"
    assert j.final_statuses(["Q1"], NOW) == {("Q1", 0): Status.FAILED}


def test_other_writers_are_read(tmp_path: Path) -> None:
    a = Journal(tmp_path / "journal", name="a")
    b = Journal(tmp_path / "journal", name="b")
    assert a.path != b.path
    a.append([rec("QA", 0, Status.SENT)])
    b.append([rec("QB", 0, Status.SENT)])
    assert set(a.final_statuses(["QA", "QB"], NOW)) == {("QA", 0), ("QB", 0)}


def test_torn_line_is_ignored(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal", name="dead")
    j.append([rec("Q1", 0, Status.SENT)])
    with open(j.path, "ab") as f:
        f.write(b"1.0\tQ2\t0\tse")  # a crash in the middle of an append
    later = Journal(tmp_path / "journal", name="next")
    assert later.final_statuses(["Q1", "Q2"], NOW) == {("Q1", 0): Status.SENT}


def test_failed_append_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(tmp_path / "journal")
    j.append([rec("Q1", 0, Status.SENT)])
    real = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        real(fd, bytes(data[:7]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError):
        j.append([rec("Q2", 0, Status.SENT)])
    monkeypatch.setattr(os, "pwrite", real)
    j.append([rec("Q3", 0, Status.SENT)])
    lines = j.path.read_bytes().splitlines()
    assert [ln.split(b"\t")[1] for ln in lines] == [b"Q1", b"Q3"]


def test_rotation_and_pruning(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    old = root / "20000101T000000-old.log"
    root.mkdir()
    old.write_bytes(b"")
    os.utime(old, (0, 0))
    j = Journal(root, segment_bytes=200, keep_days=1)
    assert not old.exists()  # pruned at open
    for i in range(10):
        j.append([rec(f"R{i}", 0, Status.SENT)])
    assert len(list(root.glob("*.log"))) > 1
    assert len(j.final_statuses([f"R{i}" for i in range(10)], NOW)) == 10


def test_lookup_skips_files_older_than_the_messages(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal")
    j.append([rec("Q1", 0, Status.SENT)])
    os.utime(j.path, (NOW - 3 * 86400, NOW - 3 * 86400))
    assert j.final_statuses(["Q1"], NOW) == {}
    assert j.final_statuses(["Q1"], NOW - 4 * 86400) == {("Q1", 0): Status.SENT}
