"""A real Postfix in front of kittiwake (issue 6, point 4): Postfix accepts mail over SMTP and
hands it to kittiwake over LMTP, over TCP and over the Unix socket. A recipient kittiwake
refuses is bounced by Postfix, one whose mailbox fails is deferred, and only those."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port
from .lmtp_helpers import LmtpServer, make_lmtp, running
from .postfix_helpers import PrivatePostfix, postfix_missing

pytestmark = pytest.mark.skipif(postfix_missing() is not None, reason=str(postfix_missing()))

#: known to Postfix; dave is not a kittiwake user
POSTFIX_USERS = (
    "alice@kittiwake.test",
    "bob@kittiwake.test",
    "carol@kittiwake.test",
    "dave@kittiwake.test",
    "sender@kittiwake.test",
)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory Postfix's lmtp client (user postfix) can reach: pytest's tmp_path is
    under a 0700 directory."""
    path = Path(tempfile.mkdtemp(prefix="kw-lmtp-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kittiwake_lmtp(tmp_path: Path, socket_dir: Path) -> Iterator[LmtpServer]:
    server = make_lmtp(tmp_path)
    server.kw.add_user("sender@kittiwake.test")
    server.socket_path = socket_dir / "lmtp.sock"
    xml = (server.kw.conf / "lmtpserver.xml").read_text()
    (server.kw.conf / "lmtpserver.xml").write_text(
        xml.replace(f"unix:{tmp_path / 'lmtp.sock'}", f"unix:{server.socket_path}")
    )
    yield from running(server)


def postfix(transport: str) -> PrivatePostfix:
    return PrivatePostfix(free_port(), transport, POSTFIX_USERS)


@pytest.fixture
def postfix_tcp(kittiwake_lmtp: LmtpServer) -> Iterator[PrivatePostfix]:
    pf = postfix(f"lmtp:inet:127.0.0.1:{kittiwake_lmtp.port}")
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture
def postfix_unix(kittiwake_lmtp: LmtpServer) -> Iterator[PrivatePostfix]:
    pf = postfix(f"lmtp:unix:{kittiwake_lmtp.socket_path}")
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


def send(pf: PrivatePostfix, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=15) as client:
        refused = client.sendmail(
            "sender@kittiwake.test",
            recipients,
            f"Subject: {subject}\r\nFrom: sender@kittiwake.test\r\n\r\nthrough Postfix\r\n",
        )
        assert refused == {}


def test_postfix_hands_mail_over_lmtp_per_recipient_outcomes(
    kittiwake_lmtp: LmtpServer, postfix_tcp: PrivatePostfix
) -> None:
    kw, pf = kittiwake_lmtp.kw, postfix_tcp
    # carol's mailbox is broken: a file stands where its Maildir goes
    (kw.data / "mail" / "kittiwake.test").mkdir(parents=True, exist_ok=True)
    broken = kw.data / "mail" / "kittiwake.test" / "carol"
    broken.write_text("not a Maildir")
    send(pf, [f"{u}@kittiwake.test" for u in ("alice", "bob", "carol", "dave")], "via postfix")

    sent = r"to=<{}@kittiwake\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent"
    pf.wait_log(sent.format("alice"))
    pf.wait_log(sent.format("bob"))
    carol = pf.wait_log(r"to=<carol@kittiwake\.test>, .*dsn=4\.3\.0, status=deferred \((.*)\)")
    assert "451 4.3.0 <carol@kittiwake.test>" in carol.group(1)
    assert "in reply to end of DATA command" in carol.group(1)
    dave = pf.wait_log(r"to=<dave@kittiwake\.test>, .*dsn=5\.1\.1, status=bounced \((.*)\)")
    assert "550 5.1.1 No such user here (in reply to RCPT TO command)" in dave.group(1)

    for user in ("alice", "bob"):
        (msg,) = kw.wait_messages(f"{user}@kittiwake.test", 1)
        assert b"Subject: via postfix" in msg and b"with LMTP id " in msg
        assert b"by mx.postfix.test (Postfix) with ESMTP" in msg  # Postfix's own Received
    # the bounce names dave only, and comes back to the sender over LMTP
    (bounce,) = kw.wait_messages("sender@kittiwake.test", 1)
    assert b"<dave@kittiwake.test>" in bounce and b"<carol@kittiwake.test>" not in bounce
    assert kw.messages("carol@kittiwake.test") == []

    # The mailbox is repaired: Postfix's next try delivers carol's copy, and only hers.
    broken.unlink()
    pf.flush()
    kw.wait_messages("carol@kittiwake.test", 1, timeout=20)
    pf.wait_log(sent.format("carol"))
    assert len(kw.messages("alice@kittiwake.test")) == 1


def test_postfix_over_the_unix_socket(
    kittiwake_lmtp: LmtpServer, postfix_unix: PrivatePostfix
) -> None:
    kw, pf = kittiwake_lmtp.kw, postfix_unix
    send(pf, ["alice@kittiwake.test", "bob@kittiwake.test"], "via the socket")
    for user in ("alice", "bob"):
        (msg,) = kw.wait_messages(f"{user}@kittiwake.test", 1, timeout=20)
        assert b"Subject: via the socket" in msg
        received = msg.split(b"Received: ")[1]
        assert received.startswith(b"from mx.postfix.test\r\n\tby mailbox.kittiwake.test")
    pf.wait_log(r"to=<alice@kittiwake\.test>, relay=.*lmtp\.sock.*status=sent")
    assert "client=[unix]" in kw.log_text()


def test_postfix_bounces_only_the_recipient_over_quota(
    kittiwake_lmtp: LmtpServer, postfix_tcp: PrivatePostfix
) -> None:
    """Postfix declares SIZE (RFC 1870), which overflows bob's limit: 552 5.2.2 at his
    RCPT, and Postfix bounces bob alone; alice has her copy."""
    kw, pf = kittiwake_lmtp.kw, postfix_tcp
    assert kw.cli("quota", "set", "bob@kittiwake.test", "1K").returncode == 0
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=15) as client:
        body = "Subject: too big for bob\r\n\r\n" + "z" * 3000 + "\r\n"
        refused = client.sendmail(
            "sender@kittiwake.test", ["alice@kittiwake.test", "bob@kittiwake.test"], body
        )
        assert refused == {}
    pf.wait_log(
        r"to=<alice@kittiwake\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent"
    )
    bob = pf.wait_log(r"to=<bob@kittiwake\.test>, .*dsn=5\.2\.2, status=bounced \((.*)\)")
    assert "552 5.2.2 Mailbox full: over its size limit (in reply to RCPT TO" in bob.group(1)
    (msg,) = kw.wait_messages("alice@kittiwake.test", 1)
    assert b"Subject: too big for bob" in msg
    (bounce,) = kw.wait_messages("sender@kittiwake.test", 1, timeout=20)
    assert b"<bob@kittiwake.test>" in bounce and b"5.2.2" in bounce
    assert kw.messages("bob@kittiwake.test") == []


def test_postfix_delivers_to_an_alias_one_reply_for_it(kittiwake_lmtp: LmtpServer) -> None:
    """sales -> alice, bob: Postfix sends one RCPT and gets one reply after the dot; both
    mailboxes have the message."""
    kw = kittiwake_lmtp.kw
    for target in ("alice@kittiwake.test", "bob@kittiwake.test"):
        assert kw.cli("alias", "add", "sales@kittiwake.test", target).returncode == 0
    pf = PrivatePostfix(
        free_port(),
        f"lmtp:inet:127.0.0.1:{kittiwake_lmtp.port}",
        (*POSTFIX_USERS, "sales@kittiwake.test"),
    )
    try:
        pf.start()
        send(pf, ["sales@kittiwake.test"], "to the sales team")
        pf.wait_log(
            r"to=<sales@kittiwake\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent"
        )
    finally:
        pf.stop()
    for user in ("alice", "bob"):
        (msg,) = kw.wait_messages(f"{user}@kittiwake.test", 1)
        assert b"Subject: to the sales team" in msg
    assert "orig_to=<sales@kittiwake.test>" in kw.log_text()


HOOKS = """
from kittiwake.hooks import DECLINED, Hook, HookResult
from kittiwake.protocol import Reply


class NoSpam(Hook):
    async def on_message(self, session, message):
        if "spam" in " ".join(message.get_all("Subject")):
            return HookResult.deny(Reply(550, "5.7.1", "Looks like spam"))
        return DECLINED
"""


def test_postfix_bounces_every_recipient_a_message_hook_refuses(tmp_path: Path) -> None:
    """A message hook in lmtpserver.xml's chain refuses after the dot: one 550 per
    recipient, and Postfix bounces each; the next message goes through."""
    server = make_lmtp(tmp_path)
    kw = server.kw
    kw.add_user("sender@kittiwake.test")
    (kw.conf / "myhooks.py").write_text(HOOKS)
    xml = (kw.conf / "lmtpserver.xml").read_text()
    (kw.conf / "lmtpserver.xml").write_text(
        xml.replace("</handlerchain>", '  <handler class="myhooks.NoSpam"/>\n    </handlerchain>')
    )
    for s in running(server):
        pf = postfix(f"lmtp:inet:127.0.0.1:{s.port}")
        try:
            pf.start()
            send(pf, ["alice@kittiwake.test", "bob@kittiwake.test"], "cheap spam")
            for user in ("alice", "bob"):
                bounced = pf.wait_log(
                    rf"to=<{user}@kittiwake\.test>, .*dsn=5\.7\.1, status=bounced \((.*)\)"
                )
                assert f"550 5.7.1 <{user}@kittiwake.test> Looks like spam" in bounced.group(1)
            send(pf, ["alice@kittiwake.test"], "hello")
            pf.wait_log(r"to=<alice@kittiwake\.test>, relay=.*status=sent")
        finally:
            pf.stop()
        (msg,) = kw.wait_messages("alice@kittiwake.test", 1)
        assert b"Subject: hello" in msg
        assert kw.messages("bob@kittiwake.test") == []
        # the bounces come back to the sender over LMTP (they are no spam)
        kw.wait_messages("sender@kittiwake.test", 1, timeout=20)
