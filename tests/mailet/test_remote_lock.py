"""The lock of a mail in the outgoing repository is a ``flock`` on its ``KEY.json``:
held by one open file at a time (RemoteDelivery and ``kittiwake queue`` alike), no lock
file made, and a mail removed cannot be locked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kittiwake.mailet import outgoing
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
