"""The lock of a mail in the outgoing repository is a ``flock`` on its ``KEY.json``:
held by one open file at a time (RemoteDelivery and ``kittiwake queue`` alike), no lock
file made, and a mail removed cannot be locked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kittiwake.mailet import outgoing, remote_store
from kittiwake.mailet.api import Mail
from kittiwake.mailet.message import Message
from kittiwake.mailet.remote_store import lock_mail, remove_mail
from kittiwake.mailet.repository import MailRepository

DATA = b"Subject: lock\r\n\r\nbody\r\n"


def _stored(tmp_path: Path) -> tuple[MailRepository, str]:
    repo = MailRepository(tmp_path, "outgoing")
    mail = Mail(
        name="Q1", sender="a@a.test", recipients=["b@b.test"], message=Message.from_bytes(DATA)
    )
    return repo, repo.store(mail)


def test_one_holder_at_a_time_and_no_lock_file(tmp_path: Path) -> None:
    repo, key = _stored(tmp_path)
    fd = lock_mail(repo, key)
    assert fd is not None
    try:
        assert lock_mail(repo, key) is None  # another open file: taken
        with pytest.raises(outgoing.Locked), outgoing.locked(repo, key):
            pass  # kittiwake queue sees it taken too
    finally:
        os.close(fd)
    assert sorted(os.listdir(repo.path)) == sorted([f"{key}.eml", f"{key}.json"])
    with outgoing.locked(repo, key):  # free again
        assert lock_mail(repo, key) is None


def test_removed_mail_cannot_be_locked(tmp_path: Path) -> None:
    repo, key = _stored(tmp_path)
    fd = lock_mail(repo, key)
    assert fd is not None
    remove_mail(repo, key, retry=False, sync=False)  # as a delivery that sent it
    os.close(fd)
    with pytest.raises(KeyError):
        lock_mail(repo, key)
    with pytest.raises(KeyError), outgoing.locked(repo, key):
        pass
    assert os.listdir(repo.path) == []


def test_a_mail_stored_again_while_waiting_is_not_locked_through_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder finishes between our open and our flock and writes KEY.json anew (a
    # new inode): a lock on the old file would protect nothing. RemoteDelivery skips the
    # mail for now; kittiwake queue says it is busy (try again), not gone.
    repo, key = _stored(tmp_path)
    real_flock = remote_store.fcntl.flock

    def flock_after_restore(fd: int, op: int) -> None:
        path = repo.path / f"{key}.json"
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
        real_flock(fd, op)

    monkeypatch.setattr(remote_store.fcntl, "flock", flock_after_restore)
    assert lock_mail(repo, key) is None
    with pytest.raises(outgoing.Locked), outgoing.locked(repo, key):
        pass
    monkeypatch.setattr(remote_store.fcntl, "flock", real_flock)
    with outgoing.locked(repo, key):  # the new file is the mail's
        assert repo.info(key).recipients == ("b@b.test",)
