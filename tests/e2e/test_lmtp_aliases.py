"""The rewrite table over LMTP (issue 6): RCPT sees aliases (address, domain, forward,
regex); delivery goes to the mailboxes they stand for, one reply per original recipient
(250 only if every mailbox behind it was written); a forward elsewhere goes into the
spool before the reply and RemoteDelivery takes it to the remote MX."""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from kw_dns import TestDns

from .conftest import free_port
from .lmtp_helpers import LmtpServer, Wire, make_lmtp, running
from .test_remote_delivery import Sink, _mailetcontainer

REMOTE = "lmtp-forward.test"
ALIASES = [
    ("sales@kittiwake.test", "alice@kittiwake.test"),
    ("sales@kittiwake.test", "bob@kittiwake.test"),
    ("@alias.test", "@kittiwake.test"),
    ("--type", "regex", r"info-(.*)@kittiwake\.test", "${1}@kittiwake.test"),
    ("team@kittiwake.test", "carol@kittiwake.test"),
    ("team@kittiwake.test", "ghost@kittiwake.test"),  # no such user
    ("--type", "forward", "fwd@kittiwake.test", f"dave@{REMOTE}"),
    ("--type", "forward", "fwd@kittiwake.test", "alice@kittiwake.test"),
]


@pytest.fixture
def sink(dns_server: TestDns) -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port("127.0.0.2")
    controller = Controller(sink, hostname="127.0.0.2", port=port)
    controller.start()
    dns_server.add(REMOTE, "MX", f"10 mx.{REMOTE}")
    dns_server.add(f"mx.{REMOTE}", "A", "127.0.0.2")
    yield sink, port
    with contextlib.suppress(AssertionError, RuntimeError):
        controller.stop()


@pytest.fixture
def lmtp(tmp_path: Path, dns_server: TestDns, sink: tuple[Sink, int]) -> Iterator[LmtpServer]:
    server = make_lmtp(tmp_path)
    kw = server.kw
    (kw.conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml())
    (kw.conf / "mailetcontainer.xml").write_text(_mailetcontainer(sink[1]))
    for args in ALIASES:
        done = kw.cli("alias", "add", *args)
        assert done.returncode == 0, done.stderr
    yield from running(server)


def test_rcpt_sees_aliases_and_delivery_goes_to_their_mailboxes(lmtp: LmtpServer) -> None:
    kw = lmtp.kw
    wire = Wire.tcp(lmtp.port)
    wire.reply()
    rcpts = [
        "sales@kittiwake.test",  # -> alice, bob
        "carol@alias.test",  # domain alias -> carol
        "info-bob@kittiwake.test",  # regex -> bob (bob gets one copy from two routes)
        "nobody@kittiwake.test",  # refused
    ]
    wire.send(
        b"LHLO mta.kittiwake.test\r\nMAIL FROM:<sender@remote.test>\r\n"
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
        + b"DATA\r\n"
    )
    replies = [wire.reply() for _ in range(2 + len(rcpts) + 1)]
    assert [r[:9] for r in replies[2:]] == [
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
        "550 5.1.1",
        "354 End d",
    ]
    wire.send(b"Subject: aliased\r\n\r\nto the team\r\n.\r\n")
    final = [wire.reply() for _ in range(3)]  # one per accepted RCPT, in order
    assert final[0].startswith("250 2.0.0 <sales@kittiwake.test> Ok: delivered as ")
    assert final[1].startswith("250 2.0.0 <carol@alias.test> Ok: delivered as ")
    assert final[2].startswith("250 2.0.0 <info-bob@kittiwake.test> Ok: delivered as ")
    wire.close()
    for user in ("alice", "bob", "carol"):
        (msg,) = kw.messages(f"{user}@kittiwake.test")
        assert msg.endswith(b"Subject: aliased\r\n\r\nto the team\r\n")
    log = kw.log_text()
    assert "to=<alice@kittiwake.test>, orig_to=<sales@kittiwake.test>, status=sent" in log
    assert "to=<carol@kittiwake.test>, orig_to=<carol@alias.test>, status=sent" in log


def test_one_failed_mailbox_behind_an_alias_fails_the_alias(lmtp: LmtpServer) -> None:
    """team -> carol (exists), ghost (no user): RCPT accepts team (one mailbox can
    take it); after the dot team gets 550 5.1.1, though carol has her copy."""
    kw = lmtp.kw
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        client.ehlo("mta.kittiwake.test")
        client.mail("sender@remote.test")
        assert client.rcpt("team@kittiwake.test")[0] == 250
        assert client.rcpt("bob@kittiwake.test")[0] == 250
        code, text = client.data(b"Subject: team\r\n\r\nx\r\n")
        assert (code, text) == (550, b"5.1.1 <team@kittiwake.test> No such user here")
        code, text = client.getreply()
        assert code == 250 and text.startswith(b"2.0.0 <bob@kittiwake.test>")
    assert len(kw.messages("carol@kittiwake.test")) == 1
    assert "to=<ghost@kittiwake.test>, orig_to=<team@kittiwake.test>, status=bounced" in (
        kw.log_text()
    )


def test_a_forward_elsewhere_is_queued_then_relayed(
    lmtp: LmtpServer, sink: tuple[Sink, int]
) -> None:
    kw = lmtp.kw
    with smtplib.LMTP(str(lmtp.socket_path), timeout=10) as client:
        refused = client.sendmail(
            "sender@remote.test", ["fwd@kittiwake.test"], b"Subject: fwd\r\n\r\nforwarded\r\n"
        )
        assert refused == {}
    (msg,) = kw.messages("alice@kittiwake.test")  # the local copy, at once
    assert msg.startswith(b"Return-Path: <sender@remote.test>\r\n")
    sender, rcpts, data = sink[0].wait(f"dave@{REMOTE}", timeout=30)
    assert sender == "sender@remote.test" and rcpts == [f"dave@{REMOTE}"]
    assert b"Subject: fwd\r\n\r\nforwarded\r\n" in data
    assert b"Return-Path:" not in data  # it belongs to the final delivery
    assert b"with LMTP id " in data  # our Received header travels on
    deadline = time.monotonic() + 10
    while "queued as" not in kw.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"to=<dave@{REMOTE}>, status=sent" in kw.log_text()
