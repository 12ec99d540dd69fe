"""End to end over loopback with real clients: smtplib, swaks, smtp-source."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess

import pytest

from .conftest import Kittiwake

needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
needs_smtp_source = pytest.mark.skipif(
    shutil.which("smtp-source") is None and not os.path.exists("/usr/sbin/smtp-source"),
    reason="smtp-source (postfix) not installed",
)


def test_smtplib_delivers_into_maildir(kittiwake: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", kittiwake.port, timeout=10) as client:
        code, ehlo = client.ehlo("client.test")
        assert code == 250
        for keyword in (
            b"PIPELINING",
            b"SIZE",
            b"8BITMIME",
            b"SMTPUTF8",
            b"ENHANCEDSTATUSCODES",
            b"CHUNKING",
        ):
            assert keyword in ehlo
        refused = client.sendmail(
            "sender@remote.test",
            ["alice@kittiwake.test", "Bob@KITTIWAKE.test"],
            b"Subject: hello\r\n\r\nHi there.\r\n.leading dot\r\n",
        )
        assert refused == {}
    alice = kittiwake.wait_messages("alice@kittiwake.test", 1)
    bob = kittiwake.wait_messages("bob@kittiwake.test", 1)
    for msg, rcpt in ((alice[0], b"alice@kittiwake.test"), (bob[0], b"Bob@KITTIWAKE.test")):
        # James's default flow: AddDeliveredToHeader, one per mailbox
        assert msg.startswith(
            b"Delivered-To: %s\r\nReturn-Path: <sender@remote.test>\r\nReceived: from client.test"
            % rcpt
        )
        assert b"by mx.kittiwake.test (kittiwake) with ESMTP id " in msg
        assert msg.endswith(b"Subject: hello\r\n\r\nHi there.\r\n.leading dot\r\n")
    log = kittiwake.log_text()
    assert "accepted from=<sender@remote.test>" in log
    assert "to=<alice@kittiwake.test>" in log and "status=sent" in log


def test_reply_names_queue_id_and_log_follows_it(kittiwake: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", kittiwake.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("sender@remote.test")
        client.rcpt("alice@kittiwake.test")
        code, text = client.data(b"Subject: id\r\n\r\nx\r\n")
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.rsplit(b" ", 1)[1].decode()
    kittiwake.wait_messages("alice@kittiwake.test", 1)
    lines = [line for line in kittiwake.log_text().splitlines() if queue_id in line]
    assert any("accepted" in line for line in lines)
    assert any("status=sent" in line for line in lines)


def test_unknown_user_and_relay_refused(kittiwake: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", kittiwake.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("sender@remote.test")
        assert client.rcpt("nobody@kittiwake.test") == (550, b"5.1.1 No such user here")
        assert client.rcpt("someone@elsewhere.test")[0:1] == (550,)
        assert client.rcpt("someone@elsewhere.test")[1].startswith(b"5.7.1")


def test_postmaster_and_abuse_always_accepted(kittiwake: Kittiwake) -> None:
    with smtplib.SMTP("127.0.0.1", kittiwake.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "",
            ["postmaster", "abuse@kittiwake.test", "PostMaster@bücher.test"],
            b"Subject: role\r\n\r\nx\r\n",
            mail_options=["SMTPUTF8"],
        )
        assert refused == {}
    # All three go to the postmaster address (postmaster@ the default domain): one copy,
    # since one message is delivered once per mailbox.
    (msg,) = kittiwake.wait_messages("postmaster@kittiwake.test", 1)
    assert b"Subject: role" in msg


def test_idn_domain_matches_as_u_label_and_a_label(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import make_kittiwake

    kw = make_kittiwake(tmp_path, users=("carol@bücher.test",))
    kw.start()
    try:
        with smtplib.SMTP("127.0.0.1", kw.port, timeout=10) as client:
            client.ehlo("client.test")
            assert (
                client.sendmail("a@remote.test", ["carol@xn--bcher-kva.test"], b"\r\nA\r\n") == {}
            )
            client.mail("a@remote.test", ["SMTPUTF8"])
            assert client.rcpt("carol@bücher.test")[0] == 250
            assert client.data(b"\r\nU\r\n")[0] == 250
        assert len(kw.wait_messages("carol@xn--bcher-kva.test", 2)) == 2
    finally:
        assert kw.stop() == 0


@needs_swaks
def test_swaks_delivers(kittiwake: Kittiwake) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{kittiwake.port}",
            "--to",
            "alice@kittiwake.test",
            "--from",
            "someone@remote.test",
            "--helo",
            "swaks.test",
            "--header",
            "Subject: swaks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    (msg,) = kittiwake.wait_messages("alice@kittiwake.test", 1)
    assert b"Subject: swaks" in msg


@needs_swaks
def test_swaks_pipelining(kittiwake: Kittiwake) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{kittiwake.port}",
            "--to",
            "bob@kittiwake.test",
            "--from",
            "someone@remote.test",
            "--pipeline",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kittiwake.wait_messages("bob@kittiwake.test", 1)


@needs_smtp_source
def test_smtp_source_many_sessions(kittiwake: Kittiwake) -> None:
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    result = subprocess.run(
        [
            smtp_source,
            "-s",
            "10",
            "-m",
            "200",
            "-l",
            "2048",
            "-f",
            "src@remote.test",
            "-t",
            "alice@kittiwake.test",
            f"127.0.0.1:{kittiwake.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(kittiwake.wait_messages("alice@kittiwake.test", 200, timeout=30)) == 200
