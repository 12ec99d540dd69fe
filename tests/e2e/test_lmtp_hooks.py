"""Handlers in lmtpserver.xml's <handlerchain> (issue 6): message hooks run after the
final dot, before delivery, as James's LMTP runs its JamesMessageHooks. A refusal is
every recipient's reply (RFC 2033: one per recipient); header edits reach every mailbox;
RCPT hooks run too."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lmtp_helpers import LmtpServer, Wire, make_lmtp, running

MYHOOKS = """
from kittiwake.hooks import DECLINED, Hook, HookResult
from kittiwake.protocol import Reply


class Screen(Hook):
    async def on_rcpt(self, session, rcpt):
        if rcpt.address.startswith("trap@"):
            return HookResult.deny(Reply(550, "5.7.1", "Not here"))
        return DECLINED

    async def on_message(self, session, message):
        subject = " ".join(message.get_all("Subject"))
        if "spam" in subject:
            return HookResult.deny(Reply(550, "5.7.1", "Looks like spam"))
        if "later" in subject:
            return HookResult.denysoft()
        message.set_header("X-Screened", session.protocol)
        return DECLINED
"""

CHAIN = """<handlerchain>
      <handler class="org.apache.james.lmtpserver.CoreCmdHandlerLoader"/>
      <handler class="myhooks.Screen"/>
    </handlerchain>"""


@pytest.fixture
def lmtp(tmp_path: Path) -> Iterator[LmtpServer]:
    server = make_lmtp(tmp_path)
    conf = server.kw.conf
    (conf / "myhooks.py").write_text(MYHOOKS)
    xml = (conf / "lmtpserver.xml").read_text()
    start, end = xml.index("<handlerchain>"), xml.index("</handlerchain>") + 15
    (conf / "lmtpserver.xml").write_text(xml[:start] + CHAIN + xml[end:])
    yield from running(server)


def send(server: LmtpServer, subject: str, body: bytes = b"hi\r\n") -> list[str]:
    wire = Wire.tcp(server.port)
    wire.reply()
    wire.send(
        b"LHLO mta.kittiwake.test\r\nMAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@kittiwake.test>\r\nRCPT TO:<trap@kittiwake.test>\r\n"
        b"RCPT TO:<bob@kittiwake.test>\r\nDATA\r\n"
    )
    replies = [wire.reply() for _ in range(6)]
    assert replies[3] == "550 5.7.1 Not here"  # the RCPT hook
    wire.send(f"Subject: {subject}\r\n".encode() + b"\r\n" + body + b".\r\n")
    out = [wire.reply() for _ in range(2)]
    wire.close()
    return out


def test_a_message_hook_refuses_for_every_recipient(lmtp: LmtpServer) -> None:
    assert send(lmtp, "buy spam") == [
        f"550 5.7.1 <{user}@kittiwake.test> Looks like spam" for user in ("alice", "bob")
    ]
    assert send(lmtp, "try later") == [
        f"451 4.7.1 <{user}@kittiwake.test> Temporary problem, try again later"
        for user in ("alice", "bob")
    ]
    assert lmtp.kw.messages("alice@kittiwake.test") == []
    assert lmtp.kw.messages("bob@kittiwake.test") == []
    assert "reject DATA" in lmtp.kw.log_text()


@pytest.mark.parametrize("size", [10, 200_000])  # in memory; spilled to its file
def test_header_edits_reach_every_mailbox(lmtp: LmtpServer, size: int) -> None:
    body = b"y" * size + b"\r\n"
    replies = send(lmtp, "hello", body)
    assert all(r.startswith("250 2.0.0 <") for r in replies), replies
    for user in ("alice", "bob"):
        (msg,) = lmtp.kw.messages(f"{user}@kittiwake.test")
        head, _, rest = msg.partition(b"\r\n\r\n")
        assert b"\r\nX-Screened: LMTP\r\n" in head and b"\r\nSubject: hello" in head
        assert head.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: ")
        assert rest == body
        names = list((lmtp.kw.maildir(f"{user}@kittiwake.test") / "new").iterdir())
        assert names[0].name.endswith(f",S={len(msg)}")  # size counts the added header


def test_smtplib_lmtp_with_hooks(lmtp: LmtpServer) -> None:
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as client:
        assert (
            client.sendmail("a@remote.test", ["alice@kittiwake.test"], b"Subject: ok\r\n\r\nx\r\n")
            == {}
        )
    (msg,) = lmtp.kw.messages("alice@kittiwake.test")
    assert b"X-Screened: LMTP\r\n" in msg
