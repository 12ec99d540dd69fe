"""Mailbox quotas over LMTP (issue 6, point 3): a recipient over its limit gets its own
552 5.2.2 (452 4.2.2 with ``tempfail``), the others their 250; per-user limits from
``kittiwake quota set``; exact under concurrent sessions in two worker processes; the
``maildirsize`` file as Dovecot reads it."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .lmtp_helpers import LmtpServer, Wire, make_lmtp, running

BODY = b"Subject: quota\r\n\r\n" + b"x" * 2000 + b"\r\n"


def with_quota(tmp_path: Path, attrs: str) -> LmtpServer:
    server = make_lmtp(tmp_path)
    (server.kw.conf / "kittiwake.xml").write_text(f"<kittiwake><quota {attrs}/></kittiwake>")
    return server


@pytest.fixture
def lmtp(tmp_path: Path) -> Iterator[LmtpServer]:
    server = with_quota(tmp_path, 'storage="100K"')
    result = server.kw.cli("quota", "set", "carol@kittiwake.test", "1K")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "carol@kittiwake.test: limit 1K (set for this user)\n"
    yield from running(server)


def test_the_recipient_over_quota_gets_552_the_others_250(lmtp: LmtpServer) -> None:
    kw = lmtp.kw
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        client.ehlo("mta.kittiwake.test")
        client.mail("sender@remote.test")
        for user in ("alice", "carol", "bob"):
            assert client.rcpt(f"{user}@kittiwake.test")[0] == 250
        code, text = client.data(BODY)
        assert code == 250 and text.startswith(b"2.0.0 <alice@kittiwake.test> Ok: delivered")
        assert client.getreply() == (
            552,
            b"5.2.2 <carol@kittiwake.test> Mailbox full: over its size limit",
        )
        code, text = client.getreply()
        assert code == 250 and text.startswith(b"2.0.0 <bob@kittiwake.test> Ok: delivered")
    (msg,) = kw.messages("alice@kittiwake.test")
    assert kw.messages("carol@kittiwake.test") == []
    # Maildir++: the limit in the header, one line per delivery (Dovecot sums them)
    assert (kw.maildir("alice@kittiwake.test") / "maildirsize").read_text() == (
        f"102400S\n0 0\n{len(msg)} 1\n"
    )
    log = kw.log_text()
    assert "to=<carol@kittiwake.test>, status=bounced" in log
    assert "dsn=5.2.2, reason=over quota: 0B of 1K used" in log
    shown = kw.cli("quota", "show", "alice@kittiwake.test")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "alice@kittiwake.test: limit 100K (the default (kittiwake.xml))",
        f"alice@kittiwake.test: used {len(msg)} bytes in 1 messages (2% of 100K)",
    ]
    # Raised while the server runs: the next delivery fits.
    assert kw.cli("quota", "set", "carol@kittiwake.test", "default").returncode == 0
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        assert client.sendmail("sender@remote.test", ["carol@kittiwake.test"], BODY) == {}
    assert len(kw.messages("carol@kittiwake.test")) == 1


def test_a_full_mailbox_is_refused_at_rcpt(lmtp: LmtpServer) -> None:
    kw = lmtp.kw
    assert kw.cli("quota", "set", "bob@kittiwake.test", "0", "--messages", "1").returncode == 0
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        assert client.sendmail("sender@remote.test", ["bob@kittiwake.test"], BODY) == {}
    wire = Wire.tcp(lmtp.port)
    wire.reply()
    wire.send(
        b"LHLO mta.kittiwake.test\r\nMAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<bob@kittiwake.test>\r\nRCPT TO:<alice@kittiwake.test>\r\n"
    )
    replies = [wire.reply() for _ in range(4)]
    assert replies[2] == "552 5.2.2 Mailbox full: over its size limit"
    assert replies[3].startswith("250 2.1.5")
    wire.close()
    assert len(kw.messages("bob@kittiwake.test")) == 1


def test_tempfail_gives_452(tmp_path: Path) -> None:
    for server in running(with_quota(tmp_path, 'storage="1K" tempfail="true"')):
        with smtplib.LMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("mta.kittiwake.test")
            client.mail("sender@remote.test")
            client.rcpt("alice@kittiwake.test")
            assert client.data(BODY) == (
                452,
                b"4.2.2 <alice@kittiwake.test> Mailbox or disk full, try again later",
            )


def test_concurrent_sessions_in_two_workers_never_exceed_the_limit(tmp_path: Path) -> None:
    server = with_quota(tmp_path, 'messages="5"')
    server.kw.env["KITTIWAKE_WORKERS"] = "2"

    def one(i: int) -> int:
        with smtplib.LMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("mta.kittiwake.test")
            client.mail("sender@remote.test")
            code = client.rcpt("alice@kittiwake.test")[0]  # 552 once the mailbox is full
            return client.data(b"X-N: %d\r\n\r\nhello\r\n" % i)[0] if code == 250 else code

    for s in running(server):
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(16)))
        assert sorted(codes) == [250] * 5 + [552] * 11
        assert len(s.kw.messages("alice@kittiwake.test")) == 5
        maildirsize = (s.kw.maildir("alice@kittiwake.test") / "maildirsize").read_text()
        assert maildirsize.startswith("5C\n")
        assert sum(int(line.split()[1]) for line in maildirsize.splitlines()[1:]) == 5
