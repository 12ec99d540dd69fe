"""RemoteDelivery (issue 8) against a real kittiwake: an authenticated submission is
relayed to a second SMTP server on 127.0.0.2 found through the loopback DNS server's MX
record; a 4xx is retried on the delayTime schedule until it succeeds; a 5xx comes back
to the sender's Maildir as a DSN made by the bounce processor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER
from kittiwake.tls import generate_self_signed
from kw_dns import TestDns

from .conftest import Kittiwake, free_port, make_kittiwake

ALICE = "alice@kittiwake.test"
REMOTE = "remote-e2e.test"
NULLMX = "nullmx-e2e.test"  # RFC 7505: accepts no mail
BROKEN = "servfail-e2e.test"  # its name server fails: temporary


@dataclass
class Sink:
    """A recording SMTP server: ``temp*`` recipients get one 451 each, ``bad*`` 550."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    rcpt_attempts: dict[str, int] = field(default_factory=dict)
    helos: list[str] = field(default_factory=list)
    #: per message received: was the session under STARTTLS
    tls: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set: DATA for a ``slow*`` recipient waits until it is cleared
    stall: threading.Event = field(default_factory=threading.Event)
    #: DATA commands waiting now
    stalled: int = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.helos.append(hostname)
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        local = address.partition("@")[0]
        with self.lock:
            n = self.rcpt_attempts[address] = self.rcpt_attempts.get(address, 0) + 1
        if local.startswith("bad"):
            return "550 5.1.1 no such user here"
        if local.startswith("never"):
            return "452 4.2.2 mailbox full"
        if local.startswith("temp") and n == 1:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if any(r.startswith("slow") for r in envelope.rcpt_tos):
            with self.lock:
                self.stalled += 1
            try:
                while self.stall.is_set():
                    await asyncio.sleep(0.02)
                    if server.transport is None or server.transport.is_closing():
                        return "421 4.3.0 the client went away"  # nothing received
            finally:
                with self.lock:
                    self.stalled -= 1
        with self.lock:
            self.tls.append(session.ssl is not None)
            self.messages.append(
                (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 queued"

    def wait(self, rcpt: str, timeout: float = 15.0) -> tuple[str, list[str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if rcpt in m[1]:
                        return m
            time.sleep(0.05)
        raise AssertionError(f"the remote server got nothing for {rcpt}: {self.messages}")


@dataclass
class Relay:
    kw: Kittiwake
    sink: Sink
    controller: Controller

    def submit(self, rcpts: list[str], subject: str, sender: str = ALICE) -> None:
        with smtplib.SMTP("127.0.0.1", self.kw.port, timeout=10) as client:
            client.login(ALICE, "secret")
            client.sendmail(
                sender,
                rcpts,
                f"From: <{ALICE}>\r\nTo: <{rcpts[0]}>\r\nSubject: {subject}\r\n\r\nhello\r\n",
            )


def _wait_outgoing_empty(kw: Kittiwake, timeout: float = 10.0) -> None:
    """The mail leaves ``outgoing`` just after its bounce is queued: poll."""
    deadline = time.monotonic() + timeout
    while listed := kw.cli("repo", "list", "outgoing").stdout.strip():
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)


def _mailetcontainer(port: int) -> str:
    start = DEFAULT_MAILETCONTAINER.index('<mailet match="All" class="RemoteDelivery">')
    end = DEFAULT_MAILETCONTAINER.index("</mailet>", start) + len("</mailet>")
    remote = (
        '<mailet match="All" class="RemoteDelivery">'
        "<outgoing>outgoing</outgoing>"
        "<delayTime>300 ms, 1 sec</delayTime>"
        "<maxRetries>2</maxRetries>"
        "<deliveryThreads>4</deliveryThreads>"
        "<sendpartial>true</sendpartial>"
        "<bounceProcessor>bounces</bounceProcessor>"
        f"<mail.smtp.port>{port}</mail.smtp.port>"
        "</mailet>"
    )
    return DEFAULT_MAILETCONTAINER[:start] + remote + DEFAULT_MAILETCONTAINER[end:]


@pytest.fixture
def relay(tmp_path: Path, dns_server: TestDns) -> Iterator[Relay]:
    sink = Sink()
    port = free_port("127.0.0.2")
    key, cert = tmp_path / "sink-key.pem", tmp_path / "sink-cert.pem"
    generate_self_signed(key, cert, f"mx.{REMOTE}")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    # STARTTLS offered (self-signed: opportunistic TLS takes it all the same)
    controller = Controller(sink, hostname="127.0.0.2", port=port, tls_context=tls)
    controller.start()
    dns_server.add(REMOTE, "MX", f"10 mx.{REMOTE}")
    dns_server.add(f"mx.{REMOTE}", "A", "127.0.0.2")
    dns_server.add(NULLMX, "MX", "0 .")
    dns_server.add(NULLMX, "A", "127.0.0.2")
    dns_server.add(BROKEN, "A", "127.0.0.2")
    dns_server.fail(BROKEN)
    kw = make_kittiwake(
        tmp_path,
        "<auth><announce>always</announce><requireSSL>false</requireSSL></auth>",
        users=(ALICE,),
    )
    (kw.conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml())
    (kw.conf / "mailetcontainer.xml").write_text(_mailetcontainer(port))
    kw.start()
    try:
        yield Relay(kw, sink, controller)
    finally:
        with contextlib.suppress(AssertionError, RuntimeError):
            controller.stop()
        if kw.proc is not None:
            code = kw.stop()
            assert code == 0, kw.log_text()[-3000:]


def test_authenticated_submission_relayed_by_mx(relay: Relay) -> None:
    relay.submit([f"carol@{REMOTE}"], "relayed")
    sender, rcpts, data = relay.sink.wait(f"carol@{REMOTE}")
    assert sender == ALICE and rcpts == [f"carol@{REMOTE}"]
    assert b"Subject: relayed\r\n" in data and b"hello" in data
    # the session pre-writes a single recipient's Delivered-To into the spool file for
    # local delivery; a relayed copy (even hard-linked into outgoing) never carries it
    assert b"Delivered-To" not in data
    assert relay.sink.helos and relay.sink.helos[-1] == "mx.kittiwake.test"
    assert relay.sink.tls == [True]  # STARTTLS was offered, so it was used
    deadline = time.monotonic() + 5
    while len(relay.kw.cli("repo", "list", "outgoing").stdout.strip()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert relay.kw.cli("repo", "list", "outgoing").stdout.strip() == ""


def _spooled(kw: Kittiwake) -> list[str]:
    from kittiwake.queue import is_queue_id

    return [p.name for p in (kw.data / "spool").rglob("*") if is_queue_id(p.name)]


def _stored(kw: Kittiwake) -> list[str]:
    return [p.name for p in (kw.data / "repositories" / "outgoing").glob("*.json")]


def test_first_attempt_goes_straight_from_the_spool(relay: Relay) -> None:
    """The first attempt is made from the spool entry: the mail never enters the
    outgoing repository, and its spool entry goes once the remote server took it."""
    relay.submit([f"carol3@{REMOTE}"], "direct")
    relay.sink.wait(f"carol3@{REMOTE}")
    deadline = time.monotonic() + 10
    while _spooled(relay.kw):
        assert time.monotonic() < deadline, _spooled(relay.kw)
        time.sleep(0.05)
    log = relay.kw.log_text()
    assert "queued for remote delivery" not in log
    assert re.search(
        rf"kittiwake.mail INFO \w+: to=<carol3@{REMOTE}>, relay=mx.{REMOTE}\[127.0.0.2\]:\d+, "
        r"delay=\d+\.\d\d, dsn=2.0.0, status=sent \(250 2.0.0 queued\)",
        log,
    ), log[-2000:]
    assert _stored(relay.kw) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stopped_during_the_first_attempt_sent_at_the_next_start(
    relay: Relay, sig: signal.Signals
) -> None:
    """Killed (or stopped) while the remote server has the mail but has not answered
    its DATA: the mail is still the spool's (nothing in outgoing), and the next start
    sends it; the remote server gets it once, as it never took the first one."""
    relay.sink.stall.set()
    rcpt = f"slow1@{REMOTE}"
    relay.submit([rcpt], "interrupted")
    deadline = time.monotonic() + 10
    while not relay.sink.stalled:
        assert time.monotonic() < deadline, relay.kw.log_text()[-2000:]
        time.sleep(0.02)
    assert len(_spooled(relay.kw)) == 1 and _stored(relay.kw) == []
    code = relay.kw.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    relay.sink.stall.clear()
    assert len(_spooled(relay.kw)) == 1  # still there for the next start
    relay.kw.start()
    _, rcpts, data = relay.sink.wait(rcpt)
    assert rcpts == [rcpt] and b"Subject: interrupted\r\n" in data
    deadline = time.monotonic() + 10
    while _spooled(relay.kw):
        assert time.monotonic() < deadline, _spooled(relay.kw)
        time.sleep(0.05)
    time.sleep(0.5)  # nothing more comes
    assert [m for m in relay.sink.messages if rcpt in m[1]] == [(ALICE, [rcpt], data)]
    assert _stored(relay.kw) == []


def test_temporary_failure_retried_then_delivered(relay: Relay) -> None:
    rcpt = f"temp1@{REMOTE}"
    started = time.monotonic()
    relay.submit([rcpt], "retried")
    _, rcpts, data = relay.sink.wait(rcpt)
    assert rcpts == [rcpt] and b"Subject: retried\r\n" in data
    assert relay.sink.rcpt_attempts[rcpt] == 2
    assert time.monotonic() - started >= 0.3  # the first delay of the schedule
    assert "deferred" in relay.kw.log_text()
    assert relay.kw.messages(ALICE) == []  # no bounce


def test_permanent_failure_bounces_to_sender(relay: Relay) -> None:
    relay.submit([f"bad1@{REMOTE}", f"carol2@{REMOTE}"], "bounced")
    relay.sink.wait(f"carol2@{REMOTE}")  # sendpartial: the good one goes
    (dsn,) = relay.kw.wait_messages(ALICE, 1, timeout=15)
    assert b"multipart/report" in dsn and b"report-type=delivery-status" in dsn
    assert f"Final-Recipient: rfc822; bad1@{REMOTE}".encode() in dsn
    assert b"Action: failed" in dsn and b"Status: 5.1.1" in dsn
    assert b"550" in dsn and b"Subject: bounced" in dsn
    assert f"carol2@{REMOTE}".encode() not in dsn.split(b"Content-Type: message/rfc822")[0]
    assert relay.sink.rcpt_attempts[f"bad1@{REMOTE}"] == 1  # never retried


def test_retries_exhausted_bounce(relay: Relay) -> None:
    rcpt = f"never1@{REMOTE}"
    relay.submit([rcpt], "gave up")
    # maxRetries 2: three attempts, 0.3 s and 1 s apart, then the DSN
    (dsn,) = relay.kw.wait_messages(ALICE, 1, timeout=20)
    assert relay.sink.rcpt_attempts[rcpt] == 3
    assert f"Final-Recipient: rfc822; {rcpt}".encode() in dsn
    assert b"Status: 5.4.7" in dsn and b"452 4.2.2 mailbox full" in dsn


def test_null_mx_bounces_at_once_and_dns_failure_defers(relay: Relay) -> None:
    relay.submit([f"dave@{NULLMX}", f"erin@{BROKEN}"], "nowhere")
    # the null MX bounces at the first attempt; the SERVFAIL is deferred on the
    # schedule (0.3 s, 1 s) and only bounces when the retries are exhausted
    dsns = relay.kw.wait_messages(ALICE, 2, timeout=20)
    (null,) = [d for d in dsns if f"Final-Recipient: rfc822; dave@{NULLMX}".encode() in d]
    assert b"Status: 5.1.10" in null
    assert f"erin@{BROKEN}".encode() not in null.split(b"Content-Type: message/rfc822")[0]
    (dns,) = [d for d in dsns if f"Final-Recipient: rfc822; erin@{BROKEN}".encode() in d]
    assert b"Status: 5.4.7" in dns and b"gave up after 3 attempts" in dns
    assert b"4.4.3" in dns  # the last error: the DNS failure
    assert relay.sink.messages == []  # never the A record of either
    log = relay.kw.log_text()
    assert log.count(f"deferred erin@{BROKEN}") == 2, log[-3000:]
    _wait_outgoing_empty(relay.kw)


def test_null_sender_gets_no_bounce(relay: Relay) -> None:
    relay.submit([f"bad2@{REMOTE}"], "from nobody", sender="")
    deadline = time.monotonic() + 10
    while "null sender, no bounce" not in relay.kw.log_text():
        assert time.monotonic() < deadline, relay.kw.log_text()[-2000:]
    assert relay.kw.messages(ALICE) == []
    _wait_outgoing_empty(relay.kw)


def test_deferred_mail_survives_a_restart(relay: Relay) -> None:
    relay.controller.stop()  # the remote server is down: connection refused
    rcpt = f"frank@{REMOTE}"
    relay.submit([rcpt], "after restart")
    deadline = time.monotonic() + 10
    while f"deferred {rcpt}" not in relay.kw.log_text():
        assert time.monotonic() < deadline, relay.kw.log_text()[-2000:]
    assert relay.kw.stop() == 0
    outgoing = relay.kw.data / "repositories" / "outgoing"
    (retry,) = outgoing.glob("*.retry")
    assert json.loads(retry.read_text())["attempts"] >= 1
    # the remote server is back (aiosmtpd's controllers do not restart: a new one)
    relay.controller = Controller(relay.sink, hostname="127.0.0.2", port=relay.controller.port)
    relay.controller.start()
    relay.kw.start()
    _, rcpts, data = relay.sink.wait(rcpt)
    assert rcpts == [rcpt] and b"Subject: after restart\r\n" in data
    assert relay.kw.messages(ALICE) == []


def test_mx_pointing_back_at_kittiwake_bounces(tmp_path: Path, dns_server: TestDns) -> None:
    """An MX that names kittiwake itself (by its listening address and port, or by its
    helloName) is a configuration error reported in the bounce, never a mail loop."""
    kw = make_kittiwake(
        tmp_path,
        "<auth><announce>always</announce><requireSSL>false</requireSSL></auth>",
        users=(ALICE,),
    )
    dns_server.add("loop-e2e.test", "MX", "10 mx.loop-e2e.test")
    dns_server.add("mx.loop-e2e.test", "A", "127.0.0.1")  # where kittiwake listens
    dns_server.add("named-e2e.test", "MX", "10 mx.kittiwake.test")  # our helloName
    dns_server.add("mx.kittiwake.test", "A", "127.0.0.2")
    (kw.conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml())
    (kw.conf / "mailetcontainer.xml").write_text(_mailetcontainer(kw.port))
    kw.start()
    try:
        with smtplib.SMTP("127.0.0.1", kw.port, timeout=10) as client:
            client.login(ALICE, "secret")
            client.sendmail(
                ALICE,
                ["carol@loop-e2e.test", "dave@named-e2e.test"],
                f"From: <{ALICE}>\r\nSubject: looping\r\n\r\nhello\r\n",
            )
        dsns = kw.wait_messages(ALICE, 2, timeout=20)
        for domain, rcpt in (("loop-e2e.test", "carol"), ("named-e2e.test", "dave")):
            (dsn,) = [d for d in dsns if f"Final-Recipient: rfc822; {rcpt}@".encode() in d]
            assert b"Status: 5.4.6" in dsn
            assert f"mail for {domain} loops back to myself".encode() in dsn
            assert b"Subject: looping" in dsn
        # accepted once (from alice): never received again from itself
        log = kw.log_text()
        assert log.count(": accepted from=<") == 1, log[-3000:]
        assert log.count("loops back to myself; <") == 1, log[-3000:]
        _wait_outgoing_empty(kw)
    finally:
        code = kw.stop()
        assert code == 0, kw.log_text()[-3000:]


def test_forward_alias_from_an_anonymous_sender_is_relayed_once(relay: Relay) -> None:
    """James's RecipientRewriteTable: a forward to another host leaves as a new mail
    (SentByMailet) that RemoteDelivery sends, whoever sent the original; the local copy
    stays; the relayed copy has the original envelope sender (no SRS) and none of the
    local copy's Delivered-To."""
    for target in (ALICE, f"carol@{REMOTE}"):
        done = relay.kw.cli("alias", "add", "--type", "forward", ALICE, target)
        assert done.returncode == 0, done.stderr
    time.sleep(0.3)  # the server's store cache
    with smtplib.SMTP("127.0.0.1", relay.kw.port, timeout=10) as client:  # no AUTH
        client.sendmail("dave@sender-e2e.test", [ALICE], b"Subject: fwd\r\n\r\nhello\r\n")
        # the client itself still cannot relay there
        client.mail("dave@sender-e2e.test")
        code, _ = client.rcpt(f"carol@{REMOTE}")
        assert code == 530  # 5.7.0: AUTH is announced to this client (else 550 5.7.1)
    sender, rcpts, data = relay.sink.wait(f"carol@{REMOTE}")
    assert sender == "dave@sender-e2e.test" and rcpts == [f"carol@{REMOTE}"]
    assert b"Subject: fwd" in data and b"Delivered-To" not in data
    (local,) = relay.kw.wait_messages(ALICE, 1)
    assert local.startswith(f"Delivered-To: {ALICE}\r\n".encode()) and b"Subject: fwd" in local
    time.sleep(1.5)
    assert [m for m in relay.sink.messages if f"carol@{REMOTE}" in m[1]] == [(sender, rcpts, data)]
    assert "relay-denied" not in relay.kw.log_text()


def test_forward_survives_a_crash_after_it_was_spooled(relay: Relay, tmp_path: Path) -> None:
    """The process dies just after RecipientRewriteTable spooled the forward's copy:
    after the restart the original does not make a second one; one copy is relayed,
    one local copy delivered."""
    for target in (ALICE, f"carol@{REMOTE}"):
        assert relay.kw.cli("alias", "add", "--type", "forward", ALICE, target).returncode == 0
    assert relay.kw.stop() == 0
    xml = _mailetcontainer(relay.controller.port)
    rrt = xml.index("</mailet>", xml.index('class="RecipientRewriteTable"')) + len("</mailet>")
    crash = (
        '<mailet match="All" class="mailet.crashers.ExitOnceOnSubject">'
        f"<subject>fwd-crash</subject><marker>{tmp_path / 'crashed'}</marker></mailet>"
    )
    (relay.kw.conf / "mailetcontainer.xml").write_text(xml[:rrt] + crash + xml[rrt:])
    relay.kw.env["PYTHONPATH"] = str(Path(__file__).parent.parent)  # mailet.crashers
    relay.kw.start()
    with smtplib.SMTP("127.0.0.1", relay.kw.port, timeout=10) as client:
        client.sendmail("dave@sender-e2e.test", [ALICE], b"Subject: fwd-crash\r\n\r\nx\r\n")
    assert relay.kw.proc is not None
    assert relay.kw.proc.wait(timeout=30) == 70
    assert (tmp_path / "crashed").exists()
    relay.kw.start()
    sender, rcpts, _data = relay.sink.wait(f"carol@{REMOTE}", timeout=30)
    assert sender == "dave@sender-e2e.test" and rcpts == [f"carol@{REMOTE}"]
    relay.kw.wait_messages(ALICE, 1, timeout=30)
    time.sleep(2)
    assert len([m for m in relay.sink.messages if f"carol@{REMOTE}" in m[1]]) == 1
    assert len(relay.kw.messages(ALICE)) == 1
    # (the log lines of the first run died with it: os._exit flushes nothing)
    assert "its new mail (index " in relay.kw.log_text()  # "... was made before a restart"
