"""Maildir delivery: link fast path, copy fallback, never twice, failures."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from kittiwake.delivery import (
    DeliveryJob,
    Journal,
    MaildirDeliverer,
    Status,
    Target,
    maildir_name,
)

QID = "0N7VENGP0A01"
WHEN = 1_750_000_000.5
MESSAGE = b"Return-Path: <s@remote.test>\nReceived: by mx.test\nSubject: hi\n\nhello\n"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir(mode=0o700)
    return tmp_path


@pytest.fixture
def deliverer(data: Path) -> MaildirDeliverer:
    return MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")


def spool_file(data: Path, qid: str = QID, content: bytes = MESSAGE) -> str:
    path = data / "spool" / qid
    path.write_bytes(content)
    path.chmod(0o600)
    return str(path)


def job(
    data: Path, targets: list[tuple[str, str | None]], recovered: bool = False, qid: str = QID
) -> DeliveryJob:
    path = (
        spool_file(data, qid) if not (data / "spool" / qid).exists() else str(data / "spool" / qid)
    )
    return DeliveryJob(
        qid,
        path,
        WHEN,
        len(MESSAGE),
        recovered,
        tuple(Target(i, r, m) for i, (r, m) in enumerate(targets)),
    )


def files(box: Path, sub: str = "new") -> list[str]:
    return sorted(p.name for p in (box / sub).iterdir())


def test_name_is_deterministic_and_maildir_safe() -> None:
    name = maildir_name(QID, WHEN, 123, "mx.test")
    assert name == f"1750000000.K{QID}.mx\\056test,S=123"
    assert "/" not in maildir_name(QID, WHEN, 1, "a/b:c,d")
    assert ":" not in maildir_name(QID, WHEN, 1, "a/b:c,d")


def test_link_fast_path(data: Path, deliverer: MaildirDeliverer) -> None:
    j = job(data, [("Alice@Local.test", "alice@local.test")])
    [[outcome]] = deliverer.deliver([j])
    assert outcome.status is Status.SENT
    assert outcome.dsn == "2.0.0"
    box = data / "mail" / "local.test" / "alice"
    assert outcome.location == str(box)
    [name] = files(box)
    assert name == maildir_name(QID, WHEN, len(MESSAGE), "mx.test")
    delivered = box / "new" / name
    # The same inode as the spool file: linked, not copied.
    assert delivered.stat().st_ino == os.stat(j.data_path).st_ino
    assert delivered.read_bytes() == MESSAGE
    assert stat.S_IMODE(delivered.stat().st_mode) == 0o600
    for d in (data / "mail", data / "mail" / "local.test", box, box / "tmp", box / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert files(box, "tmp") == [] and files(box, "cur") == []


def test_copy_when_link_impossible(
    data: Path, deliverer: MaildirDeliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def no_link(src: str, dst: str) -> None:
        calls.append(dst)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    j = job(data, [("a@local.test", "a@local.test")])
    [[outcome]] = deliverer.deliver([j])
    assert outcome.status is Status.SENT
    box = data / "mail" / "local.test" / "a"
    [name] = files(box)
    delivered = box / "new" / name
    assert delivered.read_bytes() == MESSAGE
    assert delivered.stat().st_ino != os.stat(j.data_path).st_ino
    assert stat.S_IMODE(delivered.stat().st_mode) == 0o600
    assert files(box, "tmp") == []
    # The mailbox remembers: the next message is copied without trying to link.
    deliverer.deliver([job(data, [("a@local.test", "a@local.test")], qid="0N7VENGP0A02")])
    assert len(calls) == 1
    assert len(files(box)) == 2


def test_one_copy_per_mailbox(data: Path, deliverer: MaildirDeliverer) -> None:
    j = job(
        data,
        [
            ("bob@local.test", "bob@local.test"),
            ("Bob@local.test", "bob@local.test"),
            ("carol@local.test", "carol@local.test"),
        ],
    )
    [outcomes] = deliverer.deliver([j])
    assert [o.status for o in outcomes] == [Status.SENT] * 3
    assert len(files(data / "mail" / "local.test" / "bob")) == 1
    assert len(files(data / "mail" / "local.test" / "carol")) == 1
    assert os.stat(j.data_path).st_nlink == 3


def test_no_such_mailbox_fails_and_is_journalled(data: Path, deliverer: MaildirDeliverer) -> None:
    j = job(data, [("ghost@local.test", None), ("ok@local.test", "ok@local.test")])
    [outcomes] = deliverer.deliver([j])
    assert [o.status for o in outcomes] == [Status.FAILED, Status.SENT]
    assert outcomes[0].dsn == "5.1.1"
    assert outcomes[0].detail == "no such mailbox"
    found = deliverer.journal.final_statuses([QID], WHEN)
    assert found == {(QID, 0): Status.FAILED, (QID, 1): Status.SENT}


@pytest.mark.parametrize("bad", ["../evil@local.test", "a@../x", "Upper@local.test", ".x@l.test"])
def test_unsafe_mailbox_is_refused(data: Path, deliverer: MaildirDeliverer, bad: str) -> None:
    [[outcome]] = deliverer.deliver([job(data, [(bad, bad)])])
    assert outcome.status is Status.FAILED
    assert outcome.dsn == "5.1.3"
    assert not (data / "mail").exists() or not any((data / "mail").rglob("*evil*"))


def test_unwritable_mailbox_defers(data: Path, deliverer: MaildirDeliverer) -> None:
    (data / "mail" / "local.test").mkdir(parents=True)
    (data / "mail" / "local.test" / "dan").write_text("not a directory")
    [[outcome]] = deliverer.deliver([job(data, [("dan@local.test", "dan@local.test")])])
    assert outcome.status is Status.DEFERRED
    assert outcome.dsn.startswith("4.")
    assert deliverer.journal.final_statuses([QID], WHEN) == {}


# -- never twice: a crash after the link, before the journal ---------------------


def _crash_after_link(data: Path) -> Path:
    """What a crash leaves: the message linked into the Maildir, nothing journalled."""
    first = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")
    j = job(data, [("eve@local.test", "eve@local.test")])
    box = data / "mail" / "local.test" / "eve"
    first._maildir("eve@local.test")
    os.link(j.data_path, box / "new" / maildir_name(QID, WHEN, len(MESSAGE), "mx.test"))
    return box


def test_recovered_job_found_in_new(data: Path) -> None:
    box = _crash_after_link(data)
    again = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")
    [[outcome]] = again.deliver([job(data, [("eve@local.test", "eve@local.test")], True)])
    assert outcome.status is Status.SENT
    assert len(files(box)) == 1
    assert again.journal.final_statuses([QID], WHEN) == {(QID, 0): Status.SENT}


def test_recovered_job_found_in_cur_after_reader_moved_it(data: Path) -> None:
    box = _crash_after_link(data)
    [name] = files(box)
    os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")  # what Dovecot does
    # ... even if this host now has another name.
    again = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="renamed.test")
    [[outcome]] = again.deliver([job(data, [("eve@local.test", "eve@local.test")], True)])
    assert outcome.status is Status.SENT
    assert files(box) == []
    assert files(box, "cur") == [f"{name}:2,S"]


def test_recovered_job_in_journal_is_not_redelivered(data: Path) -> None:
    first = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")
    first.deliver([job(data, [("f@local.test", "f@local.test")])])
    box = data / "mail" / "local.test" / "f"
    [name] = files(box)
    (box / "new" / name).unlink()  # read and deleted by the user before the restart
    again = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.test")
    [[outcome]] = again.deliver([job(data, [("f@local.test", "f@local.test")], True)])
    assert outcome.status is Status.SENT
    assert outcome.repeated
    assert files(box) == []


def test_second_attempt_of_fresh_job_is_idempotent(data: Path, deliverer: MaildirDeliverer) -> None:
    j = job(data, [("g@local.test", "g@local.test")])
    deliverer.deliver([j])
    [[outcome]] = deliverer.deliver([j])  # e.g. a retry after a failed journal write
    assert outcome.status is Status.SENT
    assert len(files(data / "mail" / "local.test" / "g")) == 1


def test_mailbox_removed_while_running_is_recreated(
    data: Path, deliverer: MaildirDeliverer
) -> None:
    deliverer.deliver([job(data, [("h@local.test", "h@local.test")])])
    box = data / "mail" / "local.test" / "h"
    for sub in ("new", "cur", "tmp"):
        for p in (box / sub).iterdir():
            p.unlink()
        (box / sub).rmdir()
    box.rmdir()
    [[outcome]] = deliverer.deliver(
        [job(data, [("h@local.test", "h@local.test")], qid="0N7VENGP0A03")]
    )
    assert outcome.status is Status.SENT
    assert len(files(box)) == 1


def test_batch_cost(data: Path, deliverer: MaildirDeliverer) -> None:
    """Smoke bound; the measured figure is in the report (bench_spool.py)."""
    jobs = []
    for i in range(200):
        qid = f"0N7VENGP{i:04d}"
        spool_file(data, qid)
        jobs.append(job(data, [("bulk@local.test", "bulk@local.test")], qid=qid))
    t0 = time.process_time()
    results = deliverer.deliver(jobs)
    per_msg = (time.process_time() - t0) / len(jobs)
    assert all(o.status is Status.SENT for r in results for o in r)
    assert per_msg < 2e-3
