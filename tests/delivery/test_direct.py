"""Direct delivery (LMTP): a message file, fsynced, linked into each mailbox, per-recipient
outcomes, nothing left behind."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.delivery import Journal, MaildirDeliverer, Status, Target
from kittiwake.delivery.direct import DirectDelivery, MessageFile
from kittiwake.queue import Spool

BODY = b"Return-Path: <s@remote.test>\r\nSubject: hi\r\n\r\nhello\r\n"


class Ids:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.numbers = itertools.count(1)

    def __call__(self) -> tuple[str, str]:
        qid = f"0N7VENGP{next(self.numbers):04d}"
        return qid, str(self.directory / qid)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir(mode=0o700)
    return tmp_path


@pytest.fixture
def direct(data: Path) -> Iterator[DirectDelivery]:
    journal = Journal(data / "journal")
    deliverer = MaildirDeliverer(data / "mail", journal, hostname="mx.test")
    d = DirectDelivery(deliverer, Ids(data / "spool"), threads=2, memory_threshold=100)
    yield d
    d.close()
    journal.close()


def inbox(data: Path, mailbox: str) -> list[bytes]:
    local, _, domain = mailbox.partition("@")
    new = data / "mail" / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def targets(*pairs: tuple[str, str | None]) -> list[Target]:
    return [Target(i, r, m) for i, (r, m) in enumerate(pairs)]


def test_delivers_to_each_mailbox_and_leaves_no_spool_file(
    direct: DirectDelivery, data: Path
) -> None:
    message = direct.begin()
    message.write(BODY)
    outcomes = asyncio.run(
        direct.deliver(
            message,
            targets(("a@x.test", "a@x.test"), ("B@x.test", "b@x.test"), ("a2@x.test", "a@x.test")),
        )
    )
    assert [o.status for o in outcomes] == [Status.SENT] * 3
    assert [o.recipient for o in outcomes] == ["a@x.test", "B@x.test", "a2@x.test"]
    assert inbox(data, "a@x.test") == [BODY]  # two recipients, one mailbox: one copy
    assert inbox(data, "b@x.test") == [BODY]
    assert os.listdir(data / "spool") == []
    name = next((data / "mail/x.test/a/new").iterdir()).name
    assert name.endswith(f".K{message.queue_id}.mx\\056test,S={len(BODY)}")
    journal = "".join(p.read_text() for p in (data / "journal").iterdir())
    assert journal.count(f"\t{message.queue_id}\t") == 3 and "\tsent\t" in journal


def test_ids_from_the_spool_leave_it_not_receiving(data: Path) -> None:
    # LMTP takes its queue IDs from the spool without committing there: were they counted
    # as messages being received, every later group commit would wait for them (gather)
    journal = Journal(data / "journal")
    deliverer = MaildirDeliverer(data / "mail", journal, hostname="mx.test")
    with Spool(data / "queue") as spool:
        direct = DirectDelivery(deliverer, spool.reserve, threads=1)
        try:
            for _ in range(3):
                message = direct.begin()
                assert message.path.startswith(f"{spool.root}/")
                assert message.path.endswith(f"/{message.queue_id}")
                message.write(BODY)
                outcomes = asyncio.run(direct.deliver(message, targets(("a@x.test", "a@x.test"))))
                assert [o.status for o in outcomes] == [Status.SENT]
            assert spool.receiving == 0
            assert len(inbox(data, "a@x.test")) == 3
            assert spool.take_ready() == []
        finally:
            direct.close()
            journal.close()


def test_large_message_streams_to_its_file(direct: DirectDelivery, data: Path) -> None:
    message = direct.begin()
    message.write(b"x" * 60)
    assert not os.path.exists(message.path)  # small: still in memory
    for _ in range(10):
        message.write(b"y" * 60 + b"\r\n")
    assert os.path.exists(message.path)  # over the threshold: on disk as it comes
    outcomes = asyncio.run(direct.deliver(message, targets(("a@x.test", "a@x.test"))))
    assert outcomes[0].status is Status.SENT
    assert inbox(data, "a@x.test") == [b"x" * 60 + (b"y" * 60 + b"\r\n") * 10]
    assert not os.path.exists(message.path)


def test_one_recipient_fails_the_others_are_delivered(direct: DirectDelivery, data: Path) -> None:
    # carol's Maildir cannot be made: a file stands where its directory would be
    (data / "mail" / "x.test").mkdir(parents=True)
    (data / "mail" / "x.test" / "carol").write_text("in the way")
    message = direct.begin()
    message.write(BODY)
    outcomes = asyncio.run(
        direct.deliver(
            message,
            targets(
                ("a@x.test", "a@x.test"),
                ("carol@x.test", "carol@x.test"),
                ("gone@x.test", None),
                ("b@x.test", "b@x.test"),
            ),
        )
    )
    assert [(o.status, o.dsn) for o in outcomes] == [
        (Status.SENT, "2.0.0"),
        (Status.DEFERRED, "4.3.0"),
        (Status.FAILED, "5.1.1"),
        (Status.SENT, "2.0.0"),
    ]
    assert inbox(data, "a@x.test") == [BODY] and inbox(data, "b@x.test") == [BODY]
    assert os.listdir(data / "spool") == []


def test_concurrent_deliveries_share_batches(direct: DirectDelivery, data: Path) -> None:
    async def many() -> list[list[Status]]:
        messages = []
        for i in range(40):
            m = direct.begin()
            m.write(BODY + str(i).encode())
            messages.append(m)
        results = await asyncio.gather(
            *(direct.deliver(m, targets(("a@x.test", "a@x.test"))) for m in messages)
        )
        return [[o.status for o in r] for r in results]

    assert asyncio.run(many()) == [[Status.SENT]] * 40
    assert sorted(inbox(data, "a@x.test")) == sorted(BODY + str(i).encode() for i in range(40))
    assert os.listdir(data / "spool") == []


def test_data_file_failure_raises_and_cleans_up(data: Path) -> None:
    journal = Journal(data / "journal")
    deliverer = MaildirDeliverer(data / "mail", journal, hostname="mx.test")
    missing = data / "no-such-directory"
    direct = DirectDelivery(deliverer, Ids(missing), threads=1)
    try:
        message = direct.begin()
        message.write(BODY)
        with pytest.raises(FileNotFoundError):
            asyncio.run(direct.deliver(message, targets(("a@x.test", "a@x.test"))))
        assert inbox(data, "a@x.test") == []
    finally:
        direct.close()
        journal.close()


def test_journal_failure_raises_and_cleans_up(direct: DirectDelivery, data: Path) -> None:
    direct.deliverer.journal.close()  # type: ignore[attr-defined]  # appends now fail (EBADF)
    message = direct.begin()
    message.write(BODY)
    with pytest.raises(OSError):
        asyncio.run(direct.deliver(message, targets(("a@x.test", "a@x.test"))))
    assert os.listdir(data / "spool") == []


def test_abort_removes_a_spilled_file(data: Path) -> None:
    message = MessageFile("0N7VENGP0001", str(data / "spool" / "0N7VENGP0001"), 10)
    message.write(b"0123456789ABCDEF")
    assert os.path.exists(message.path)
    message.abort()
    message.abort()
    assert not os.path.exists(message.path)
