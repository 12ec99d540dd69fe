"""LMTP end to end (issue 6): smtplib.LMTP, raw pipelined sessions, smtp-source -L, over TCP
and over the Unix socket. Delivery goes straight into the Maildirs, one reply per recipient."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.delivery.base import Outcome, Status
from kittiwake.queue import list_spool
from kittiwake.server.lmtp import _reply

from .lmtp_helpers import LmtpServer, Wire, make_lmtp, running

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
needs_smtp_source = pytest.mark.skipif(
    not os.path.exists(SMTP_SOURCE), reason="smtp-source (postfix) not installed"
)


@pytest.fixture
def lmtp(tmp_path: Path) -> Iterator[LmtpServer]:
    yield from running(make_lmtp(tmp_path))


def spool_files(server: LmtpServer) -> list[str]:
    spool = server.kw.data / "spool"
    return sorted(
        name
        for slot in spool.iterdir()
        if slot.is_dir()
        for name in os.listdir(slot)
        if not name.startswith(("log", "lock", "."))
    )


def test_smtplib_lmtp_delivers_into_each_maildir(lmtp: LmtpServer) -> None:
    kw = lmtp.kw
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        code, lhlo = client.ehlo("mta.kittiwake.test")  # smtplib.LMTP sends LHLO
        assert code == 250
        for keyword in (b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SIZE", b"CHUNKING"):
            assert keyword in lhlo
        assert b"AUTH" not in lhlo
        # smtplib.LMTP.sendmail reads one reply after the dot; LMTP sends one per recipient
        assert client.mail("sender@remote.test")[0] == 250
        assert client.rcpt("alice@kittiwake.test")[0] == 250
        assert client.rcpt("Bob@KITTIWAKE.test")[0] == 250
        code, text = client.data(b"Subject: lmtp\r\n\r\nHello over LMTP.\r\n.leading dot\r\n")
        assert (code, text[:42]) == (250, b"2.0.0 <alice@kittiwake.test> Ok: delivered")
        code, text = client.getreply()
        assert (code, text[:40]) == (250, b"2.0.0 <Bob@KITTIWAKE.test> Ok: delivered")
    # No queue: the files are in the Maildirs when the replies come.
    for address in ("alice@kittiwake.test", "bob@kittiwake.test"):
        (msg,) = kw.messages(address)
        assert msg.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: from mta.kittiwake")
        assert b"by mailbox.kittiwake.test (kittiwake) with LMTP id " in msg
        assert msg.endswith(b"Subject: lmtp\r\n\r\nHello over LMTP.\r\n.leading dot\r\n")
    assert list_spool(kw.data / "spool") == []
    log = kw.log_text()
    assert "accepted from=<sender@remote.test>" in log and "listener=lmtpserver" in log
    assert log.count("status=sent") == 2


def test_each_recipient_gets_its_own_reply_in_rcpt_order(lmtp: LmtpServer) -> None:
    kw = lmtp.kw
    # carol's Maildir cannot be written: a file stands where its directory goes
    (kw.data / "mail" / "kittiwake.test").mkdir(parents=True, exist_ok=True)
    (kw.data / "mail" / "kittiwake.test" / "carol").write_text("not a Maildir")
    wire = Wire.tcp(lmtp.port)
    assert wire.reply().startswith("220 mailbox.kittiwake.test LMTP")
    # everything pipelined, as an MTA sends it
    wire.send(
        b"LHLO mta.kittiwake.test\r\n"
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@kittiwake.test>\r\n"
        b"RCPT TO:<nobody@kittiwake.test>\r\n"
        b"RCPT TO:<someone@elsewhere.test>\r\n"
        b"RCPT TO:<carol@kittiwake.test>\r\n"
        b"RCPT TO:<bob@kittiwake.test>\r\n"
        b"RCPT TO:<alice@kittiwake.test>\r\n"
        b"DATA\r\n"
    )
    assert wire.reply().startswith("250-mailbox.kittiwake.test")
    assert wire.reply().startswith("250 2.1.0")
    assert wire.reply().startswith("250 2.1.5")
    assert wire.reply() == "550 5.1.1 No such user here"
    assert wire.reply().startswith("550 5.7.1")
    assert wire.reply().startswith("250 2.1.5")
    assert wire.reply().startswith("250 2.1.5")
    assert wire.reply().startswith("250 2.1.5")
    assert wire.reply().startswith("354")
    wire.send(b"Subject: partial\r\n\r\nsome get it\r\n.\r\n")
    replies = [wire.reply() for _ in range(4)]
    assert replies[0].startswith("250 2.0.0 <alice@kittiwake.test> Ok: delivered as ")
    assert replies[1] == (
        "451 4.3.0 <carol@kittiwake.test> Mailbox temporarily unavailable, try again later"
    )
    assert replies[2].startswith("250 2.0.0 <bob@kittiwake.test> Ok: delivered as ")
    assert replies[3].startswith("250 2.0.0 <alice@kittiwake.test> Ok: delivered as ")
    wire.send(b"QUIT\r\n")
    assert wire.reply().startswith("221")
    wire.close()
    assert len(kw.messages("alice@kittiwake.test")) == 1  # twice named, one copy
    assert len(kw.messages("bob@kittiwake.test")) == 1
    log = kw.log_text()
    assert "to=<carol@kittiwake.test>, status=deferred" in log
    assert "to=<bob@kittiwake.test>, status=sent" in log


def test_lhlo_only_and_no_auth(lmtp: LmtpServer) -> None:
    wire = Wire.tcp(lmtp.port)
    wire.reply()
    for verb in (b"HELO", b"EHLO"):
        wire.send(verb + b" mta.kittiwake.test\r\n")
        assert wire.reply() == "500 5.5.1 Command unrecognized: this is LMTP, use LHLO"
    wire.send(b"MAIL FROM:<a@remote.test>\r\n")
    assert wire.reply() == "503 5.5.1 Send LHLO first"
    wire.send(b"LHLO mta.kittiwake.test\r\n")
    assert "AUTH" not in wire.reply()
    wire.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert wire.reply().startswith("5")
    wire.close()


def test_bdat_last_gets_one_reply_per_recipient(lmtp: LmtpServer) -> None:
    wire = Wire.tcp(lmtp.port)
    wire.reply()
    body1, body2 = b"Subject: chunks\r\n\r\nfirst ", b"second\r\n"
    wire.send(
        b"LHLO mta.kittiwake.test\r\nMAIL FROM:<>\r\n"
        b"RCPT TO:<alice@kittiwake.test>\r\nRCPT TO:<bob@kittiwake.test>\r\n"
        + f"BDAT {len(body1)}\r\n".encode()
        + body1
        + f"BDAT {len(body2)} LAST\r\n".encode()
        + body2
    )
    replies = [wire.reply() for _ in range(7)]
    assert replies[4] == f"250 2.0.0 {len(body1)} octets received"
    assert replies[5].startswith("250 2.0.0 <alice@kittiwake.test> Ok: delivered")
    assert replies[6].startswith("250 2.0.0 <bob@kittiwake.test> Ok: delivered")
    wire.close()
    (msg,) = lmtp.kw.messages("bob@kittiwake.test")
    assert msg.startswith(b"Return-Path: <>\r\n")
    assert msg.endswith(body1 + body2)


def test_unix_socket(lmtp: LmtpServer) -> None:
    path = lmtp.socket_path
    # An MTA's LMTP client runs as another user (Postfix: "postfix"): anyone may connect.
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    with smtplib.LMTP(str(path), timeout=10) as client:
        refused = client.sendmail(
            "sender@remote.test", ["carol@kittiwake.test"], b"Subject: u\r\n\r\nx\r\n"
        )
        assert refused == {}
    (msg,) = lmtp.kw.messages("carol@kittiwake.test")
    received = msg.split(b"\r\n")[1]
    assert received.startswith(b"Received: from ") and b"(" not in received  # no address
    assert "client=[unix]" in lmtp.kw.log_text()
    assert lmtp.kw.stop() == 0
    assert not path.exists()  # removed at stop


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    server = make_lmtp(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(server.socket_path))  # bound, never listening: what a crash leaves
    stale.close()
    for s in running(server):
        with smtplib.LMTP(str(s.socket_path), timeout=10) as client:
            assert client.sendmail("", ["alice@kittiwake.test"], b"Subject: s\r\n\r\n") == {}


def test_over_the_size_limit_every_recipient_is_told(tmp_path: Path) -> None:
    for server in running(make_lmtp(tmp_path, "<maxmessagesize>1</maxmessagesize>")):
        wire = Wire.tcp(server.port)
        wire.reply()
        wire.send(
            b"LHLO mta.kittiwake.test\r\nMAIL FROM:<a@remote.test>\r\n"
            b"RCPT TO:<alice@kittiwake.test>\r\nRCPT TO:<bob@kittiwake.test>\r\nDATA\r\n"
        )
        assert [wire.reply()[:3] for _ in range(5)] == ["250", "250", "250", "250", "354"]
        wire.send(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n.\r\n")
        assert [wire.reply() for _ in range(2)] == [
            f"552 5.3.4 <{r}@kittiwake.test> Message size exceeds fixed maximum message size"
            for r in ("alice", "bob")
        ]
        wire.close()
        assert server.kw.messages("alice@kittiwake.test") == []


@needs_smtp_source
@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_smtp_source_lmtp(lmtp: LmtpServer, over: str) -> None:
    target = f"127.0.0.1:{lmtp.port}" if over == "tcp" else f"unix:{lmtp.socket_path}"
    options = ["-L", "-s", "5", "-m", "30", "-l", "2048", "-f", "sender@remote.test"]
    result = subprocess.run(
        [SMTP_SOURCE, *options, "-t", "alice@kittiwake.test", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lmtp.kw.messages("alice@kittiwake.test")) == 30


@pytest.mark.parametrize(
    "status, dsn, want",
    [
        (Status.SENT, "2.0.0", "250 2.0.0 <r@x.test> Ok: delivered as Q"),
        (Status.DEFERRED, "4.2.2", "452 4.2.2 <r@x.test> Mailbox or disk full, try again later"),
        (Status.DEFERRED, "4.3.0", "451 4.3.0 <r@x.test> Mailbox temporarily unavailable, "),
        (Status.FAILED, "5.1.1", "550 5.1.1 <r@x.test> No such user here"),
        (Status.FAILED, "5.2.2", "552 5.2.2 <r@x.test> Mailbox full"),
        (Status.FAILED, "5.1.3", "550 5.1.3 <r@x.test> Mailbox unavailable"),
    ],
)
def test_outcome_replies(status: Status, dsn: str, want: str) -> None:
    assert str(_reply(Outcome(0, "r@x.test", status, dsn), "Q")).startswith(want)


def test_two_workers_share_the_lmtp_sockets(tmp_path: Path) -> None:
    """The supervisor binds the Unix socket once, before the workers fork; both serve it."""
    server = make_lmtp(tmp_path)
    server.kw.env["KITTIWAKE_WORKERS"] = "2"
    for s in running(server):
        for i in range(12):
            where = (str(s.socket_path),) if i % 2 else ("127.0.0.1", s.port)
            with smtplib.LMTP(*where, timeout=10) as client:
                message = f"X-N: {i}\r\n\r\nx\r\n"
                assert client.sendmail("a@remote.test", ["alice@kittiwake.test"], message) == {}
        assert len(s.kw.messages("alice@kittiwake.test")) == 12
        log = s.kw.log_text()
        assert "worker 0 started" in log and "worker 1 started" in log
        assert "client=[unix]" in log
        assert s.kw.stop() == 0
        assert not s.socket_path.exists()
