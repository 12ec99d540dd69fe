"""RemoteDelivery (issue 8, point 8) against real peers on other loopback addresses, found
through MX records of the loopback DNS server:

* a real Postfix (private instance, virtual(8) into Maildirs) on 127.0.0.3: a mail
  arrives in its Maildir; an unknown user's 550 comes back as a DSN in the sender's
  Maildir; a 451 is retried on the schedule and delivered once Postfix takes it;
* a second kittiwake on 127.0.0.4: delivered into its Maildir, its 550 bounced; while it
  is down the mail waits (``kittiwake queue list`` shows the refused connection) and
  ``kittiwake queue flush`` sends it once it is up (``queue remove`` drops one mail for
  good, ``queue retry`` sends another); down for good: a DSN;
* a smarthost requiring AUTH (a third kittiwake on 127.0.0.5, STARTTLS and
  ``<required>``), used as ``gateway`` with ``gatewayUsername``/``gatewayPassword``: the
  mail goes through it to the second kittiwake; a wrong password is deferred (as Postfix's
  smtp client does with a 535) and bounced when the retries are exhausted.

Every relaying kittiwake sends to port ``mail.smtp.port`` of the MX hosts: the test's
port for that peer (port 25 would need root and a free port 25 on each address).
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER
from kittiwake.tls import generate_self_signed
from kw_dns import TestDns

from .conftest import Kittiwake, free_port, make_kittiwake
from .postfix_helpers import PrivatePostfix, postfix_missing

ALICE = "alice@kittiwake.test"
PF_DOMAIN = "postfix-peer.test"
KW_DOMAIN = "kittiwake-peer.test"
SMART_DOMAIN = "smarthost-peer.test"
PF_ADDR, KW_ADDR, SMART_ADDR = "127.0.0.3", "127.0.0.4", "127.0.0.5"
SMART_USER, SMART_PASSWORD = f"relay@{SMART_DOMAIN}", "smart-secret"
SUBMISSION = "<auth><announce>always</announce><requireSSL>false</requireSSL></auth>"


def _domainlist(domain: str) -> str:
    return (
        f"<domainlist><domainnames><domainname>{domain}</domainname></domainnames>"
        f"<defaultDomain>{domain}</defaultDomain></domainlist>"
    )


def _container(params: str) -> str:
    """The default mailetcontainer.xml with RemoteDelivery's parameters replaced."""
    start = DEFAULT_MAILETCONTAINER.index('<mailet match="All" class="RemoteDelivery">')
    end = DEFAULT_MAILETCONTAINER.index("</mailet>", start) + len("</mailet>")
    remote = (
        '<mailet match="All" class="RemoteDelivery"><outgoing>outgoing</outgoing>'
        "<deliveryThreads>4</deliveryThreads><sendpartial>true</sendpartial>"
        f"<bounceProcessor>bounces</bounceProcessor>{params}</mailet>"
    )
    return DEFAULT_MAILETCONTAINER[:start] + remote + DEFAULT_MAILETCONTAINER[end:]


def _relay(base: Path, dns: TestDns, params: str) -> Kittiwake:
    """The sending kittiwake: alice submits with AUTH on 127.0.0.1."""
    kw = make_kittiwake(base, SUBMISSION, users=(ALICE,))
    (kw.conf / "dnsservice.xml").write_text(dns.dnsservice_xml())
    (kw.conf / "mailetcontainer.xml").write_text(_container(params))
    return kw


def _submit(kw: Kittiwake, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", kw.port, timeout=30) as client:
        client.login(ALICE, "secret")
        client.sendmail(
            ALICE,
            rcpts,
            f"From: <{ALICE}>\r\nTo: <{rcpts[0]}>\r\nSubject: {subject}\r\n\r\nhello peer\r\n",
        )


def _stop(*servers: Kittiwake) -> None:
    for kw in servers:
        if kw.proc is not None:
            code = kw.stop()
            assert code == 0, kw.log_text()[-3000:]


def _queue(kw: Kittiwake) -> list[dict[str, str]]:
    """``kittiwake queue list``, each line as its fields (``key`` the first)."""
    result = kw.cli("queue", "list")
    assert result.returncode == 0, result.stderr
    out = []
    for line in result.stdout.splitlines():
        key, *fields = line.split("\t")
        out.append({"key": key, **dict(f.split("=", 1) for f in fields)})
    return out


def _wait_queue(kw: Kittiwake, want: str, timeout: float = 30.0) -> dict[str, str]:
    """Poll ``queue list`` until a mail's last error contains ``want``."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        seen = _queue(kw)
        for m in seen:
            if want in m.get("error", ""):
                return m
        time.sleep(0.1)
    raise AssertionError(f"no queued mail with error {want!r}: {seen}\n{kw.log_text()[-3000:]}")


def _wait_empty(kw: Kittiwake, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _queue(kw):
        assert time.monotonic() < deadline, _queue(kw)
        time.sleep(0.1)


def _dsn_body(dsn: bytes) -> bytes:
    """The DSN's human and machine parts, without the returned message."""
    return dsn.split(b"Content-Type: message/rfc822")[0]


# --------------------------------------------------------------------------- Postfix


@pytest.fixture
def postfix_peer(dns_server: TestDns) -> Iterator[PrivatePostfix]:
    missing = postfix_missing()
    if missing:
        pytest.skip(missing)
    port = free_port(PF_ADDR)
    access_line = f"dora@{PF_DOMAIN} 451 4.3.0 mailbox being set up, try again later\n"
    pf = PrivatePostfix(
        port,
        "virtual",
        (f"carol@{PF_DOMAIN}", f"dora@{PF_DOMAIN}"),
        address=PF_ADDR,
        domain=PF_DOMAIN,
        maildir=True,
        main_cf="smtpd_recipient_restrictions = check_recipient_access "
        "texthash:{d}/access, permit_mynetworks, reject_unauth_destination\n",
    )
    main_cf = pf.dir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("{d}", str(pf.dir)))
    (pf.dir / "access").write_text(access_line)
    dns_server.add(PF_DOMAIN, "MX", f"10 mx.{PF_DOMAIN}")
    dns_server.add(f"mx.{PF_DOMAIN}", "A", PF_ADDR)
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


def test_postfix_peer_gets_the_mail_and_its_550_bounces(
    tmp_path: Path, dns_server: TestDns, postfix_peer: PrivatePostfix
) -> None:
    relay = _relay(
        tmp_path,
        dns_server,
        f"<delayTime>1 sec</delayTime><maxRetries>3</maxRetries>"
        f"<mail.smtp.port>{postfix_peer.smtp_port}</mail.smtp.port>",
    )
    relay.start()
    try:
        _submit(relay, [f"carol@{PF_DOMAIN}", f"nobody@{PF_DOMAIN}"], "to postfix")
        (got,) = postfix_peer.wait_maildir(f"carol@{PF_DOMAIN}", 1)
        assert b"Subject: to postfix" in got and b"hello peer" in got
        # Postfix's own trace: it took the mail from kittiwake's EHLO name over loopback
        assert b"Received: from mx.kittiwake.test" in got
        assert f"Delivered-To: carol@{PF_DOMAIN}".encode() in got
        postfix_peer.wait_log(rf"to=<carol@{PF_DOMAIN}>.*status=sent \(delivered to maildir\)")
        # nobody: Postfix's 550 at RCPT, a DSN in alice's Maildir, no Maildir at Postfix
        (dsn,) = relay.wait_messages(ALICE, 1, timeout=30)
        head = _dsn_body(dsn)
        assert f"Final-Recipient: rfc822; nobody@{PF_DOMAIN}".encode() in head
        assert b"Status: 5.1.1" in head and b"User unknown in virtual mailbox table" in head
        assert f"carol@{PF_DOMAIN}".encode() not in head
        assert postfix_peer.maildir_messages(f"nobody@{PF_DOMAIN}") == []
        _wait_empty(relay)
    finally:
        _stop(relay)


def test_postfix_peer_451_then_250(
    tmp_path: Path, dns_server: TestDns, postfix_peer: PrivatePostfix
) -> None:
    relay = _relay(
        tmp_path,
        dns_server,
        f"<delayTime>2 sec</delayTime><maxRetries>20</maxRetries>"
        f"<mail.smtp.port>{postfix_peer.smtp_port}</mail.smtp.port>"
        # no kept connections: `postfix reload` applies the new access table to new
        # smtpd processes only, and a kept connection (reused by the retry two seconds
        # later) would go on talking to the old one
        "<connectionIdleTime>0</connectionIdleTime>",
    )
    relay.start()
    try:
        rcpt = f"dora@{PF_DOMAIN}"
        _submit(relay, [rcpt], "later")
        queued = _wait_queue(relay, "Recipient address rejected: mailbox being set up")
        assert queued["error"].startswith("451 4.3.0")
        assert queued["to"] == rcpt and int(queued["attempts"]) >= 1
        postfix_peer.wait_log(rf"NOQUEUE: reject: RCPT from .*451 4.3.0 <{rcpt}>")
        assert postfix_peer.maildir_messages(rcpt) == []
        # the mailbox is ready: Postfix answers 250 from now on
        (postfix_peer.dir / "access").write_text("")
        postfix_peer.reload()
        (got,) = postfix_peer.wait_maildir(rcpt, 1, timeout=60)
        assert b"Subject: later" in got
        _wait_empty(relay)
        assert relay.messages(ALICE) == []  # delivered in the end: no bounce
    finally:
        _stop(relay)


# --------------------------------------------------------------------------- kittiwake


def _kittiwake_peer(base: Path, extra: str = "") -> Kittiwake:
    """A second kittiwake, the MX of KW_DOMAIN on 127.0.0.4, with user carol."""
    kw = make_kittiwake(
        base,
        extra,
        host=KW_ADDR,
        hello=f"mx.{KW_DOMAIN}",
        domainlist=_domainlist(KW_DOMAIN),
    )
    kw.add_user(f"carol@{KW_DOMAIN}")
    return kw


@pytest.fixture
def kittiwake_peer(tmp_path: Path, dns_server: TestDns) -> Iterator[Kittiwake]:
    """Not started: each test starts it when it wants it up."""
    kw = _kittiwake_peer(tmp_path / "peer")
    dns_server.add(KW_DOMAIN, "MX", f"10 mx.{KW_DOMAIN}")
    dns_server.add(f"mx.{KW_DOMAIN}", "A", KW_ADDR)
    try:
        yield kw
    finally:
        _stop(kw)


def test_kittiwake_peer_gets_the_mail_and_its_550_bounces(
    tmp_path: Path, dns_server: TestDns, kittiwake_peer: Kittiwake
) -> None:
    kittiwake_peer.start()
    relay = _relay(
        tmp_path / "relay",
        dns_server,
        f"<delayTime>1 sec</delayTime><maxRetries>3</maxRetries>"
        f"<mail.smtp.port>{kittiwake_peer.port}</mail.smtp.port>",
    )
    relay.start()
    try:
        _submit(relay, [f"carol@{KW_DOMAIN}", f"nobody@{KW_DOMAIN}"], "to kittiwake")
        (got,) = kittiwake_peer.wait_messages(f"carol@{KW_DOMAIN}", 1, timeout=30)
        assert b"Subject: to kittiwake" in got and b"hello peer" in got
        # the peer's Received line: from the relay's EHLO name, over loopback
        assert b"Received: from mx.kittiwake.test" in got and b"[127.0.0.1]" in got
        (dsn,) = relay.wait_messages(ALICE, 1, timeout=30)
        head = _dsn_body(dsn)
        assert f"Final-Recipient: rfc822; nobody@{KW_DOMAIN}".encode() in head
        assert b"Status: 5.1.1" in head and b"Action: failed" in head
        assert f"carol@{KW_DOMAIN}".encode() not in head
        assert kittiwake_peer.messages(f"nobody@{KW_DOMAIN}") == []
        _wait_empty(relay)
    finally:
        _stop(relay)


def test_kittiwake_peer_down_then_flushed(
    tmp_path: Path, dns_server: TestDns, kittiwake_peer: Kittiwake
) -> None:
    """Down: deferred (the schedule's next attempt is an hour away); once it is up,
    ``kittiwake queue flush`` makes the running relay send it at its next sweep."""
    relay = _relay(
        tmp_path / "relay",
        dns_server,
        f"<delayTime>1 hour</delayTime><maxRetries>3</maxRetries>"
        f"<mail.smtp.port>{kittiwake_peer.port}</mail.smtp.port>",
    )
    relay.start()
    try:
        rcpt = f"carol@{KW_DOMAIN}"
        _submit(relay, [rcpt], "while down")
        queued = _wait_queue(relay, "refused")
        assert queued["to"] == rcpt and queued["attempts"] == "1"
        assert "(in 60 min)" in queued["next"] and "4.4.1" in queued["error"]
        shown = relay.cli("queue", "show", queued["key"])
        assert shown.returncode == 0 and "Attempts: 1" in shown.stdout
        assert "Subject: while down" in shown.stdout and "hello peer" not in shown.stdout
        kittiwake_peer.start()
        flushed = relay.cli("queue", "flush")
        assert flushed.returncode == 0, flushed.stderr
        assert "1 deferred mail(s) made due now" in flushed.stdout
        assert "the running server sends them" in flushed.stdout
        (got,) = kittiwake_peer.wait_messages(rcpt, 1, timeout=30)
        assert b"Subject: while down" in got
        _wait_empty(relay)
        assert relay.messages(ALICE) == []
    finally:
        _stop(relay)


def test_queue_remove_and_retry_on_a_running_relay(
    tmp_path: Path, dns_server: TestDns, kittiwake_peer: Kittiwake
) -> None:
    """Two mails wait for the peer; one is removed, the other retried once the peer is
    up: only that one arrives, and nobody gets a bounce."""
    relay = _relay(
        tmp_path / "relay",
        dns_server,
        f"<delayTime>1 hour</delayTime><maxRetries>3</maxRetries>"
        f"<mail.smtp.port>{kittiwake_peer.port}</mail.smtp.port>",
    )
    relay.start()
    try:
        rcpt = f"carol@{KW_DOMAIN}"
        _submit(relay, [rcpt], "to be removed")
        _submit(relay, [rcpt], "to be retried")
        deadline = time.monotonic() + 30
        while len([m for m in _queue(relay) if m["attempts"] == "1"]) < 2:
            assert time.monotonic() < deadline, _queue(relay)
            time.sleep(0.1)
        keys = {}
        for m in _queue(relay):
            shown = relay.cli("queue", "show", m["key"]).stdout
            keys["removed" if "Subject: to be removed" in shown else "retried"] = m["key"]
        removed = relay.cli("queue", "remove", keys["removed"])
        assert removed.returncode == 0, removed.stderr
        assert f"removed {keys['removed']}" in removed.stdout
        assert [m["key"] for m in _queue(relay)] == [keys["retried"]]
        kittiwake_peer.start()
        retried = relay.cli("queue", "retry", keys["retried"][:12])  # by its queue ID
        assert retried.returncode == 0, retried.stderr
        assert f"{keys['retried']}: due now" in retried.stdout
        (got,) = kittiwake_peer.wait_messages(rcpt, 1, timeout=30)
        assert b"Subject: to be retried" in got
        _wait_empty(relay)
        time.sleep(1.5)  # a sweep later: still only the one
        assert len(kittiwake_peer.messages(rcpt)) == 1
        assert relay.messages(ALICE) == []
    finally:
        _stop(relay)


def test_kittiwake_peer_down_for_good_bounces(
    tmp_path: Path, dns_server: TestDns, kittiwake_peer: Kittiwake
) -> None:
    relay = _relay(
        tmp_path / "relay",
        dns_server,
        f"<delayTime>300 ms</delayTime><maxRetries>1</maxRetries>"
        f"<mail.smtp.port>{kittiwake_peer.port}</mail.smtp.port>",
    )
    relay.start()
    try:
        rcpt = f"carol@{KW_DOMAIN}"
        _submit(relay, [rcpt], "never up")
        (dsn,) = relay.wait_messages(ALICE, 1, timeout=30)
        head = _dsn_body(dsn)
        assert f"Final-Recipient: rfc822; {rcpt}".encode() in head
        assert b"Status: 5.4.7" in head and b"gave up after 2 attempts" in head
        assert b"refused" in head
        assert b"Subject: never up" in dsn
        _wait_empty(relay)
        assert kittiwake_peer.messages(rcpt) == []
    finally:
        _stop(relay)


# --------------------------------------------------------------------------- smarthost


@pytest.fixture
def smarthost(
    tmp_path: Path, dns_server: TestDns, kittiwake_peer: Kittiwake
) -> Iterator[Kittiwake]:
    """A kittiwake on 127.0.0.5 whose listener requires AUTH (after STARTTLS, its
    default), relaying its users' mail on by MX to the kittiwake peer."""
    base = tmp_path / "smarthost"
    (base / "tls").mkdir(parents=True)
    key, cert = base / "tls" / "key.pem", base / "tls" / "cert.pem"
    generate_self_signed(key, cert, f"smtp.{SMART_DOMAIN}")
    extra = (
        f'<tls startTLS="true"><privateKey>{key}</privateKey>'
        f"<certificates>{cert}</certificates></tls>"
        "<auth><announce>always</announce><required>true</required></auth>"
        # it relays for another server, whose senders are that server's users
        "<verifyIdentity>disabled</verifyIdentity>"
    )
    kw = make_kittiwake(
        base,
        extra,
        host=SMART_ADDR,
        hello=f"smtp.{SMART_DOMAIN}",
        domainlist=_domainlist(SMART_DOMAIN),
    )
    kw.add_user(SMART_USER, SMART_PASSWORD)
    (kw.conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml())
    (kw.conf / "mailetcontainer.xml").write_text(
        _container(
            f"<delayTime>1 sec</delayTime><maxRetries>3</maxRetries>"
            f"<mail.smtp.port>{kittiwake_peer.port}</mail.smtp.port>"
        )
    )
    kittiwake_peer.start()
    kw.start()
    try:
        yield kw
    finally:
        _stop(kw)


def _via_smarthost(base: Path, dns: TestDns, smart: Kittiwake, password: str) -> Kittiwake:
    return _relay(
        base,
        dns,
        f"<gateway>{SMART_ADDR}:{smart.port}</gateway>"
        f"<gatewayUsername>{SMART_USER}</gatewayUsername>"
        f"<gatewayPassword>{password}</gatewayPassword>"
        "<delayTime>500 ms</delayTime><maxRetries>1</maxRetries>",
    )


def test_smarthost_with_auth(
    tmp_path: Path, dns_server: TestDns, smarthost: Kittiwake, kittiwake_peer: Kittiwake
) -> None:
    # without AUTH the smarthost takes nothing, not even for a local user
    with smtplib.SMTP(SMART_ADDR, smarthost.port, timeout=30) as anonymous:
        anonymous.ehlo("anonymous.test")
        code, _ = anonymous.mail(ALICE)
        assert code == 530
    relay = _via_smarthost(tmp_path / "relay", dns_server, smarthost, SMART_PASSWORD)
    relay.start()
    try:
        rcpt = f"carol@{KW_DOMAIN}"
        _submit(relay, [rcpt], "via the smarthost")
        (got,) = kittiwake_peer.wait_messages(rcpt, 1, timeout=30)
        assert b"Subject: via the smarthost" in got
        # the smarthost's Received line: kittiwake's EHLO, STARTTLS and AUTH (ESMTPSA)
        assert b"by smtp.smarthost-peer.test" in got and b"with ESMTPSA" in got
        assert b"by mx.kittiwake-peer.test" in got
        _wait_empty(relay)
        _wait_empty(smarthost)
        assert relay.messages(ALICE) == []
    finally:
        _stop(relay)


def test_smarthost_wrong_password_deferred_then_bounced(
    tmp_path: Path, dns_server: TestDns, smarthost: Kittiwake, kittiwake_peer: Kittiwake
) -> None:
    relay = _via_smarthost(tmp_path / "relay", dns_server, smarthost, "wrong-password")
    relay.start()
    try:
        rcpt = f"carol@{KW_DOMAIN}"
        _submit(relay, [rcpt], "bad login")
        # a 535 is the smarthost refusing this client now, not the recipient: deferred
        # (Postfix's smtp client does the same), then, retries exhausted, bounced
        (dsn,) = relay.wait_messages(ALICE, 1, timeout=30)
        head = _dsn_body(dsn)
        assert f"Final-Recipient: rfc822; {rcpt}".encode() in head
        assert b"Status: 5.4.7" in head and b"535" in head
        log = relay.log_text()
        assert f"deferred {rcpt}" in log and "535" in log
        assert kittiwake_peer.messages(rcpt) == []
        _wait_empty(relay)
    finally:
        _stop(relay)
