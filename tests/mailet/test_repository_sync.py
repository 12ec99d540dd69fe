"""MailRepository's group commit (``deferred_sync``): what a batch stores is complete
and durable at the end of the block; an unchanged message is hard-linked from its
spool file; a mail removed before the flush (RemoteDelivery was quick) is skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kittiwake.mailet.api import Mail
from kittiwake.mailet.message import Message
from kittiwake.mailet.repository import MailRepository, deferred_sync

DATA = b"Return-Path: <a@a.test>\r\nSubject: batch\r\n\r\nbody\r\n"


def _mail(spool: Path, name: str) -> Mail:
    path = spool / name
    path.write_bytes(DATA)
    return Mail(
        name=name,
        sender="a@a.test",
        recipients=[f"{name}@b.test"],
        message=Message(str(path), len(DATA)),
        state="relay",
    )


def test_batch_store_links_unchanged_and_writes_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    repo = MailRepository(tmp_path / "repositories", "outgoing")
    repo.path.mkdir(parents=True)  # (creating it fsyncs its parent at once)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    unchanged, changed, removed = _mail(spool, "m1"), _mail(spool, "m2"), _mail(spool, "m3")
    changed.message.add_header("X-Changed", "yes")
    assert changed.message.modified
    with deferred_sync():
        monkeypatch.setattr(os, "fsync", counting_fsync)
        k1, k2, k3 = repo.store(unchanged), repo.store(changed), repo.store(removed)
        assert synced == []  # nothing fsynced inside the block
        assert repo.remove(k3)  # delivered and removed before the flush
        synced_in_block = len(synced)
    # changed: .eml + .json; unchanged: .json; removed: skipped; one directory
    assert len(synced) - synced_in_block == 4
    assert os.stat(repo.path / f"{k1}.eml").st_ino == os.stat(spool / "m1").st_ino
    assert repo.message_bytes(k1) == DATA
    assert b"X-Changed: yes" in repo.message_bytes(k2)
    assert os.stat(repo.path / f"{k2}.eml").st_ino != os.stat(spool / "m2").st_ino
    assert repo.load(k1).recipients == ["m1@b.test"]
    assert sorted(repo.keys()) == sorted([k1, k2])


def test_hidden_delivered_to_is_not_stored(tmp_path: Path) -> None:
    """A single-recipient spool file starts with the session's Delivered-To, hidden by
    Message; a relayed copy must not carry it (Postfix's local(8) would take it for a
    forwarding loop): the file is linked all the same, the stored mail skips the field."""
    spool = tmp_path / "spool"
    spool.mkdir()
    path = spool / "m1"
    path.write_bytes(b"Delivered-To: m1@b.test\r\n" + DATA)
    mail = Mail(
        name="m1",
        sender="a@a.test",
        recipients=["m1@b.test"],
        message=Message(str(path), path.stat().st_size, delivered_to="m1@b.test"),
        state="relay",
    )
    repo = MailRepository(tmp_path / "repositories", "outgoing")
    with deferred_sync():
        key = repo.store(mail)
    assert repo.message_bytes(key) == DATA
    assert repo.load(key).message.as_bytes() == DATA
    assert repo.info(key).size == len(DATA)
    assert os.stat(repo.path / f"{key}.eml").st_ino == path.stat().st_ino


def test_outside_a_block_store_is_durable_at_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    repo = MailRepository(tmp_path / "repositories", "error")
    key = repo.store(_mail(spool, "m4"))
    # written, not linked: the spool file may not be fsynced for a caller outside a batch
    assert os.stat(repo.path / f"{key}.eml").st_ino != os.stat(spool / "m4").st_ino
    assert repo.message_bytes(key) == DATA


def test_concurrent_removals_share_directory_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from kittiwake.mailet import repository

    spool = tmp_path / "spool"
    spool.mkdir()
    repo = MailRepository(tmp_path / "repositories", "outgoing")
    keys = [repo.store(_mail(spool, f"r{i}")) for i in range(24)]
    calls: list[float] = []
    real = repository._fsync_dir

    def slow_fsync_dir(path: Path) -> None:
        calls.append(time.monotonic())
        time.sleep(0.02)  # a slow disk: removals pile up behind one flush
        real(path)

    monkeypatch.setattr(repository, "_fsync_dir", slow_fsync_dir)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda k=k: results.append(repo.remove(k))) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 24 and repo.keys() == []
    assert 1 <= len(calls) < 24  # shared, yet each removal waited for one after it
    assert repo.remove(keys[0]) is False
