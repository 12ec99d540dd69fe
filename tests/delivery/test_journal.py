"""The delivery journal: durable appends, lookups across writers, torn lines."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kittiwake.delivery import (
    DeliveryJob,
    Journal,
    JournalRecord,
    MaildirDeliverer,
    Status,
    Target,
)

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


# -- the size cap, and what it must never delete ------------------------------------

SPOOLED = "0N7VENGP0A01"  # a queue ID (the pruner reads the spool's data file names)


def logs(root: Path) -> list[Path]:
    return sorted(root.glob("*.log"))


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in logs(root))


def spool_data(data: Path, qid: str = SPOOLED) -> Path:
    """A message in the spool, as the spool lays it out: ``spool/NN/<queue id>``."""
    slot = data / "spool" / "00"
    slot.mkdir(parents=True, exist_ok=True)
    path = slot / qid
    path.write_bytes(b"Subject: x\n\nx\n")
    return path


def fill(j: Journal, n: int, prefix: str = "F") -> None:
    for i in range(n):
        j.append([rec(f"{prefix}{i}", 0, Status.SENT, "x" * 40)])


def test_size_cap_deletes_the_oldest_files(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    j = Journal(root, name="w", segment_bytes=300, max_bytes=1500)
    fill(j, 60)  # ~100 bytes a record: about 6000 bytes written in all
    # The cap holds within one segment (the file being written is never deleted) ...
    assert size(root) <= 1500 + 300 + 200
    # ... and the newest records are the ones kept.
    found = j.final_statuses([f"F{i}" for i in range(60)], NOW - 10)
    assert ("F59", 0) in found and ("F0", 0) not in found
    j.close()


def test_size_cap_keeps_records_of_spooled_mail(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    data_file = spool_data(tmp_path)
    j = Journal(root, name="w", segment_bytes=300, max_bytes=600)
    j.append([rec(SPOOLED, 0, Status.SENT)])
    fill(j, 40)
    # pinned: its message is still in the spool
    assert j.final_statuses([SPOOLED], NOW - 10) == {(SPOOLED, 0): Status.SENT}
    assert size(root) <= 600 + 300 + 200  # the others are still pruned
    assert ("F10", 0) not in j.final_statuses(["F10"], NOW - 10)  # not in the pinned file
    data_file.unlink()  # delivered: it left the spool
    fill(j, 10, "G")
    assert j.final_statuses([SPOOLED], NOW - 10) == {}
    j.close()


def test_age_pruning_keeps_records_of_spooled_mail(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    spool_data(tmp_path)
    old = Journal(root, name="old")
    old.append([rec(SPOOLED, 0, Status.SENT)])
    old.append([rec("Q2", 0, Status.SENT)])
    other = Journal(root, name="other")
    other.append([rec("Q3", 0, Status.SENT)])
    old.close()
    other.close()
    week_ago = NOW - 8 * 86400
    for p in (old.path, other.path):
        os.utime(p, (week_ago, week_ago))
    j = Journal(root, name="new")  # prunes at open
    assert old.path.exists() and not other.path.exists()
    assert j.final_statuses([SPOOLED], week_ago) == {(SPOOLED, 0): Status.SENT}
    j.close()


def test_a_live_writers_file_is_never_pruned(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    live = Journal(root, name="live")
    live.append([rec("Q1", 0, Status.SENT, "x" * 400)])
    os.utime(live.path, (0, 0))  # old, and alone over the cap: still open, so kept
    pruner = Journal(root, name="pruner", max_bytes=100)
    assert live.path.exists()
    live.append([rec("Q2", 0, Status.SENT)])
    assert set(pruner.final_statuses(["Q1", "Q2"], 0)) == {("Q1", 0), ("Q2", 0)}
    live.close()  # closed: its writer will never append again
    assert pruner.prune() == 1
    assert not live.path.exists()
    pruner.close()


def test_unlistable_spool_prunes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    spool = tmp_path / "spool"
    spool.mkdir()
    j = Journal(root, name="w", segment_bytes=300, max_bytes=300)
    fill(j, 10)
    before = {(p, p.stat().st_ino) for p in logs(root)}
    kept = j.final_statuses([f"F{i}" for i in range(10)], NOW - 10)
    spool.rmdir()
    spool.write_bytes(b"")  # listing it fails (ENOTDIR), as an unreadable one would
    fill(j, 10, "G")
    # fail closed: without knowing what is spooled, nothing is deleted
    assert before <= {(p, p.stat().st_ino) for p in logs(root)}
    assert j.final_statuses([f"F{i}" for i in range(10)], NOW - 10) == kept
    assert size(root) > 300 + 300 + 200  # over the cap, knowingly
    spool.unlink()
    spool.mkdir()
    fill(j, 5, "H")
    assert size(root) <= 300 + 300 + 200
    j.close()


_CRASHING_DELIVERY = """
import os, signal, sys
from pathlib import Path
from kittiwake.delivery import DeliveryJob, Journal, MaildirDeliverer, Status, Target

data, qid, when = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
path = data / "spool" / "00" / qid
deliverer = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")
job = DeliveryJob(qid, str(path), when, path.stat().st_size, False,
                  (Target(0, "a@local.test", "a@local.test"),))
[[outcome]] = deliverer.deliver([job])
assert outcome.status is Status.SENT, outcome
os.kill(os.getpid(), signal.SIGKILL)  # before the spool entry is removed
"""


def test_sigkill_then_a_full_journal_still_delivers_once(tmp_path: Path) -> None:
    """The crash the journal exists for: delivered and journalled, then SIGKILL before
    the spool entry went. The user deletes the message (so only the journal knows it
    was delivered), a restarted process fills its journal far past the cap, and the
    recovered message is still not delivered a second time."""
    data_file = spool_data(tmp_path)
    when = time.time()
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_DELIVERY, str(tmp_path), SPOOLED, str(when)],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    box = tmp_path / "mail" / "local.test" / "a"
    [delivered] = list((box / "new").iterdir())
    delivered.unlink()  # read and deleted before the restart
    [crashed_log] = logs(tmp_path / "journal")
    crashed_inode = crashed_log.stat().st_ino

    journal = Journal(tmp_path / "journal", name="restart", segment_bytes=300, max_bytes=600)
    fill(journal, 40)  # rotations, each pruning down to the cap
    assert crashed_log.stat().st_ino == crashed_inode
    again = MaildirDeliverer(tmp_path / "mail", journal, hostname="mx.test")
    job = DeliveryJob(
        SPOOLED,
        str(data_file),
        when,
        data_file.stat().st_size,
        True,
        (Target(0, "a@local.test", "a@local.test"),),
    )
    [[outcome]] = again.deliver([job])
    assert outcome.status is Status.SENT and outcome.repeated
    assert list((box / "new").iterdir()) == []

    data_file.unlink()  # what the spool does next: the message is finished
    assert journal.prune() >= 1
    assert not crashed_log.exists()
    journal.close()
