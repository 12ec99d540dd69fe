"""Maildir++ quota (``delivery/quota.py``): the ``maildirsize`` file as Courier and Dovecot
write it, the rebuild rules, and the lock that keeps concurrent deliveries from
together going over the limit (threads and processes)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from kittiwake.delivery import quota
from kittiwake.delivery.base import DeliveryJob, Status, Target
from kittiwake.delivery.journal import Journal
from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.delivery.quota import Limit, Usage
from kittiwake.delivery.quota_limits import QuotaOverrides, Quotas


def maildir(tmp_path: Path) -> str:
    root = tmp_path / "box"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    return str(root)


@pytest.mark.parametrize(
    "header, want",
    [
        ("1000S", Limit(1000, 0)),
        ("1000S,20C", Limit(1000, 20)),
        ("20C", Limit(0, 20)),
        ("0S,0C", Limit()),
        ("", Limit()),
    ],
)
def test_header(header: str, want: Limit) -> None:
    assert Limit.from_header(header) == want
    if want:
        assert Limit.from_header(want.header()) == want


def test_rebuild_counts_every_folder_with_sizes_from_names(tmp_path: Path) -> None:
    box = maildir(tmp_path)
    Path(box, "new", "1.K1.h,S=300").write_bytes(b"x" * 10)  # the name's S= wins
    Path(box, "cur", "2.K2.h,S=200,W=210:2,S").write_bytes(b"x")  # Dovecot's form
    Path(box, "cur", "3.plain").write_bytes(b"x" * 50)  # no S=: stat
    for sub in ("new", "cur"):
        Path(box, ".Trash", sub).mkdir(parents=True)
    Path(box, ".Trash", "cur", "4.K4.h,S=1000:2,ST").write_bytes(b"")
    used = quota.usage(box, Limit(10_000, 100))
    assert (used.storage, used.messages) == (1550, 4)
    assert Path(box, "maildirsize").read_text() == "10000S,100C\n1550 4\n"
    assert os.listdir(Path(box, "tmp")) == []  # written there, renamed into place


def test_appended_lines_are_summed_and_a_changed_limit_rebuilds(tmp_path: Path) -> None:
    box = maildir(tmp_path)
    Path(box, "maildirsize").write_text("5000S\n100 1\n400 2\n-50 -1\n")
    assert quota.usage(box, Limit(5000)) == Usage(450, 2, Limit(5000))
    quota.add(box, 1000)
    assert quota.usage(box, Limit(5000)) == Usage(1450, 3, Limit(5000))
    # another limit than the header's: rebuilt from the (empty) Maildir
    assert quota.usage(box, Limit(9000)) == Usage(0, 0, Limit(9000))
    assert Path(box, "maildirsize").read_text() == "9000S\n0 0\n"


def test_a_file_past_5120_bytes_is_rebuilt(tmp_path: Path) -> None:
    box = maildir(tmp_path)
    Path(box, "new", "1.K1.h,S=10").write_bytes(b"")
    Path(box, "maildirsize").write_text("100000S\n" + "7 1\n" * 1300)
    assert quota.usage(box, Limit(100000)) == Usage(10, 1, Limit(100000))


def test_a_stale_file_of_a_full_mailbox_is_rebuilt(tmp_path: Path) -> None:
    box = maildir(tmp_path)
    Path(box, "maildirsize").write_text("1000S\n1000 1\n")  # the message was removed since
    assert quota.usage(box, Limit(1000)).full  # fresh: trusted
    old = time.time() - 16 * 60
    os.utime(Path(box, "maildirsize"), (old, old))
    assert quota.usage(box, Limit(1000)) == Usage(0, 0, Limit(1000))


def test_usage_rules() -> None:
    used = Usage(900, 9, Limit(1000, 10))
    assert used.allows(100) and not used.allows(101)
    assert not Usage(900, 10, Limit(1000, 10)).allows(1)
    assert Usage(1000, 1, Limit(1000)).full and not used.full
    assert used.describe() == "over quota: 900B of 1000B, 9 of 10 messages used"


def test_overrides_are_seen_by_another_connection(tmp_path: Path) -> None:
    server = QuotaOverrides(tmp_path / "quota.db")
    cli = QuotaOverrides(tmp_path / "quota.db")
    quotas = Quotas(Limit(5 << 20), server)
    assert quotas.limit_for("alice@a.test") == Limit(5 << 20)
    cli.set("alice@a.test", Limit(1 << 20, 10))
    assert quotas.limit_for("alice@a.test") == Limit(1 << 20, 10)
    cli.set("alice@a.test", Limit())  # explicitly unlimited
    assert not quotas.limit_for("alice@a.test")
    cli.set("alice@a.test", None)
    assert quotas.limit_for("alice@a.test") == Limit(5 << 20)
    server.close()
    cli.close()


def _deliver_many(root: str, journal_dir: str, first: int, n: int, size: int) -> None:
    deliverer = MaildirDeliverer(Path(root), Journal(Path(journal_dir)), hostname="h")
    deliverer.quotas = Quotas(Limit(0, 0), final=True)
    deliverer.quotas.default = Limit(10 * size, 0)
    for i in range(first, first + n):
        src = os.path.join(journal_dir, f"m{i}")
        with open(src, "wb") as f:
            f.write(b"x" * size)
        job = DeliveryJob(
            f"Q{i:06d}",
            src,
            time.time(),
            size,
            False,
            (Target(0, "a@a.test", "a@a.test"),),
            quota_final=True,
        )
        deliverer.deliver([job])
        os.unlink(src)
    deliverer.close()


def test_concurrent_processes_never_exceed_the_limit(tmp_path: Path) -> None:
    """Four processes deliver 10 messages each into one mailbox that takes 10: exactly
    10 land, and ``maildirsize`` says so."""
    root = tmp_path / "mail"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_deliver_many, args=(str(root), str(tmp_path / f"j{k}"), k * 10, 10, 100)
        )
        for k in range(4)
    ]
    for k, p in enumerate(procs):
        (tmp_path / f"j{k}").mkdir()
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    box = root / "a.test" / "a"
    assert len(os.listdir(box / "new")) == 10
    used = quota.usage(str(box), Limit(1000))
    assert (used.storage, used.messages) == (1000, 10)


def test_over_quota_outcome_final_or_deferred(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path / "mail", Journal(tmp_path / "j"), hostname="h")
    deliverer.quotas = Quotas(Limit(150))
    src = tmp_path / "msg"
    src.write_bytes(b"x" * 100)
    outcomes = []
    for i, final in enumerate((True, True, False)):
        job = DeliveryJob(
            f"Q{i}",
            str(src),
            1000.0 + i,
            100,
            False,
            (Target(0, "a@a.test", "a@a.test"),),
            quota_final=final,
        )
        outcomes.append(deliverer.deliver([job])[0][0])
    assert outcomes[0].status is Status.SENT
    assert (outcomes[1].status, outcomes[1].dsn) == (Status.FAILED, "5.2.2")
    assert (outcomes[2].status, outcomes[2].dsn) == (Status.DEFERRED, "4.2.2")
    assert outcomes[1].detail == "over quota: 100B of 150B used"
    # the same message again (an earlier attempt placed it): not counted twice
    job = DeliveryJob("Q0", str(src), 1000.0, 100, False, (Target(0, "a@a.test", "a@a.test"),))
    assert deliverer.deliver([job])[0][0].status is Status.SENT
    assert deliverer.quota_usage("a@a.test") == Usage(100, 1, Limit(150))
    deliverer.close()


def test_without_limits_of_its_own_kittiwake_honours_the_files(tmp_path: Path) -> None:
    """Dovecot's quota_rule (or Courier's maildirmake -q) wrote the header: with no
    limit configured in kittiwake, those limits apply and deliveries are counted; an
    explicit "unlimited" override ignores them but still counts."""
    deliverer = MaildirDeliverer(tmp_path / "mail", Journal(tmp_path / "j"), hostname="h")
    overrides = QuotaOverrides(tmp_path / "quota.db")
    deliverer.quotas = Quotas(Limit(), overrides)
    box = tmp_path / "mail" / "a.test" / "a"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    (box / "maildirsize").write_text("150S\n0 0\n")
    src = tmp_path / "msg"
    src.write_bytes(b"x" * 100)

    def deliver(i: int) -> Status:
        job = DeliveryJob(
            f"Q{i}",
            str(src),
            1000.0 + i,
            100,
            False,
            (Target(0, "a@a.test", "a@a.test"),),
            quota_final=True,
        )
        return deliverer.deliver([job])[0][0].status

    assert deliver(0) is Status.SENT
    assert deliver(1) is Status.FAILED
    assert deliverer.quota_usage("a@a.test") == Usage(100, 1, Limit(150))
    overrides.set("a@a.test", Limit())  # unlimited here
    assert deliver(2) is Status.SENT
    assert (box / "maildirsize").read_text() == "150S\n0 0\n100 1\n100 1\n"
    deliverer.close()
    overrides.close()


def test_file_limit_is_read_once_per_batch(tmp_path: Path) -> None:
    """Within a delivery batch a Maildir's maildirsize header is read once (the quota
    check and the delivery both ask); a file another program writes meanwhile applies
    from the next batch; outside a batch every call reads the file."""
    box = tmp_path / "box"
    box.mkdir()
    with quota.batch_memo():
        assert quota.file_limit(str(box)) is None
        (box / quota.MAILDIRSIZE).write_text("1000S,10C\n")
        assert quota.file_limit(str(box)) is None  # the batch's answer
        with quota.batch_memo():  # nested: the same memo
            assert quota.file_limit(str(box)) is None
    found = quota.file_limit(str(box))
    assert found is not None and found.storage == 1000 and found.messages == 10
    (box / quota.MAILDIRSIZE).write_text("2000S\n")
    found = quota.file_limit(str(box))
    assert found is not None and found.storage == 2000
    with quota.batch_memo():
        found = quota.file_limit(str(box))
        assert found is not None and found.storage == 2000
