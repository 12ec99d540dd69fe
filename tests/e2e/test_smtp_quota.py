"""Mailbox quotas on the SMTP path (issue 6, point 3, for the mailet container's
LocalDelivery): a message that does not fit is bounced with a DSN status 5.2.2 (as
James's LocalDelivery sends it to the error processor); a mailbox already full is
refused at RCPT with 452 4.2.2, so the sending server keeps the message and retries."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Kittiwake, make_kittiwake

BODY = b"Subject: big\r\nFrom: bob@kittiwake.test\r\n\r\n" + b"y" * 2000 + b"\r\n"


@pytest.fixture
def kw(tmp_path: Path) -> Iterator[Kittiwake]:
    kw = make_kittiwake(
        tmp_path,
        "<authorizedAddresses>127.0.0.0/8</authorizedAddresses>",  # bob sends from here
        users=("alice@kittiwake.test", "bob@kittiwake.test"),
    )
    (kw.conf / "kittiwake.xml").write_text('<kittiwake><quota storage="3K"/></kittiwake>')
    # bob gets the bounce, which holds alice's message: no limit for him
    assert kw.cli("quota", "set", "bob@kittiwake.test", "unlimited").returncode == 0
    kw.start()
    yield kw
    assert kw.stop() == 0, kw.log_text()[-3000:]


def test_over_quota_bounces_and_a_full_mailbox_is_refused_at_rcpt(kw: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", kw.port, timeout=15) as client:
        assert client.sendmail("bob@kittiwake.test", ["alice@kittiwake.test"], BODY) == {}
        kw.wait_messages("alice@kittiwake.test", 1)
        # with SIZE declared (RFC 1870) it does not fit: refused at RCPT, try later
        refused = client.sendmail("bob@kittiwake.test", ["bob@kittiwake.test"], BODY)
        assert refused == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail("bob@kittiwake.test", ["alice@kittiwake.test"], BODY)
        assert info.value.recipients["alice@kittiwake.test"][0] == 452
        # without SIZE: accepted (the mailbox is not full yet), then bounced
        assert client.mail("bob@kittiwake.test")[0] == 250
        assert client.rcpt("alice@kittiwake.test")[0] == 250
        assert client.data(BODY)[0] == 250
    dsn = kw.wait_messages("bob@kittiwake.test", 2, timeout=20)[-1]
    assert b"Status: 5.2.2" in dsn
    assert b"Final-Recipient: rfc822; alice@kittiwake.test" in dsn
    assert len(kw.messages("alice@kittiwake.test")) == 1
    # one message is all alice may hold now: full, so RCPT says try later
    assert kw.cli("quota", "set", "alice@kittiwake.test", "0", "--messages", "1").returncode == 0
    with smtplib.SMTP("127.0.0.1", kw.port, timeout=15) as client:
        client.ehlo("client.test")
        client.mail("bob@kittiwake.test")
        assert client.rcpt("alice@kittiwake.test") == (
            452,
            b"4.2.2 Mailbox or disk full, try again later",
        )
        assert client.rcpt("bob@kittiwake.test")[0] == 250
    log = kw.log_text()
    assert "to=<alice@kittiwake.test>, status=failed" in log and "dsn=5.2.2" in log
    assert "reject RCPT" in log and "452 4.2.2" in log


def test_user_remove_drops_the_quota_override(kw: Kittiwake) -> None:
    assert kw.cli("quota", "set", "alice@kittiwake.test", "10M").returncode == 0
    shown = kw.cli("quota", "show", "alice@kittiwake.test")
    assert "set for this user" in shown.stdout, shown.stdout + shown.stderr
    removed = kw.cli("user", "remove", "alice@kittiwake.test")
    assert removed.returncode == 0, removed.stderr
    kw.add_user("alice@kittiwake.test")
    shown = kw.cli("quota", "show", "alice@kittiwake.test")
    assert shown.returncode == 0, shown.stderr
    assert "the default (kittiwake.xml)" in shown.stdout, shown.stdout
