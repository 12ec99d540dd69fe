"""AUTH and relay control (issue 5) against a real kittiwake: swaks and curl with PLAIN
and LOGIN over STARTTLS and implicit TLS; every relay trick, unauthenticated,
authenticated and from a trusted address; each verifyIdentity mode; each auth.announce
mode as the EHLO reply shows it; 538 on clear text; the per-IP failure budget across
two worker processes; aliases; submission's Date and Message-ID; James hash import."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kittiwake.tls import generate_self_signed

from .conftest import DOMAINLIST, Kittiwake, free_port, wait_for_port
from .raw_smtp import RawSmtp
from .test_tls import need

HELLO = "mx.kittiwake.test"
ALICE, BOB, ADMIN = "alice@kittiwake.test", "bob@kittiwake.test", "admin@kittiwake.test"
PASSWORD = {ALICE: "alice-secret", BOB: "bob-secret", ADMIN: "admin-secret"}
# the listeners of the module's server: name -> what it is for
LISTENERS = {
    "mx": "port 25 style: NoAuthCmdHandlerLoader, no TLS",
    "submission": "STARTTLS, announce forUnauthorizedAddresses, requireSSL (default), required",
    "smtps": "implicit TLS, announce always, required",
    "clear": "requireSSL false, announce always: AUTH on clear text (tests only)",
    "never": "announce never, requireSSL false",
    "trusted": "authorizedAddresses 127.0.0.2, announce forUnauthorizedAddresses",
    "legacy": "the deprecated <authRequired>true</authRequired>, requireSSL false",
    "relaxed": "verifyIdentity relaxed, requireSSL false, announce always",
    "disabled": "verifyIdentity disabled, requireSSL false, announce always",
    "noplain": "plainAuthEnabled false",
}


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class AuthServer:
    kw: Kittiwake
    ports: dict[str, int]
    ca: Path

    def message(self, address: str, subject: str, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.kw.messages(address):
                if f"Subject: {subject}\r\n".encode() in msg:
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"{address}: no message with Subject: {subject}")

    def no_message(self, address: str, subject: str) -> None:
        time.sleep(0.3)
        assert not any(f"Subject: {subject}\r\n".encode() in m for m in self.kw.messages(address))


def listener(name: str, port: int, body: str) -> str:
    return (
        f"<smtpserver><jmxName>{name}</jmxName><bind>127.0.0.1:{port}</bind>"
        f'<helloName autodetect="false">{HELLO}</helloName>{body}</smtpserver>'
    )


NOAUTH = '<handlerchain coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader"/>'
CLEAR = "<requireSSL>false</requireSSL><ipFailureLimit>1000</ipFailureLimit>"
NO_BUDGET = "<ipFailureLimit>1000</ipFailureLimit>"
DEAD_DNS = (
    "<dnsservice><servers><server>127.0.0.1:9</server></servers>"
    "<autodiscover>false</autodiscover><timeout>1</timeout></dnsservice>"
)


def make_server(base: Path, *, budget: str = "", workers: int = 1) -> AuthServer:
    conf = base / "conf"
    (conf / "tls").mkdir(parents=True)
    key, cert = conf / "tls" / "key.pem", conf / "tls" / "cert.pem"
    generate_self_signed(key, cert, HELLO)
    tls = f"<privateKey>{key}</privateKey><certificates>{cert}</certificates></tls>"
    ports = {name: free_port() for name in LISTENERS}
    limit = budget or NO_BUDGET
    bodies = {
        "mx": NOAUTH,
        "submission": f'<tls startTLS="true">{tls}<auth><announce>forUnauthorizedAddresses'
        f"</announce><required>true</required>{limit}</auth>",
        "smtps": f'<tls socketTLS="true">{tls}<auth><announce>always</announce>'
        f"<required>true</required>{limit}</auth>",
        "clear": f"<auth><announce>always</announce>{CLEAR}{budget}</auth>",
        "never": f"<auth><announce>never</announce>{CLEAR}</auth>",
        "trusted": "<authorizedAddresses>127.0.0.2</authorizedAddresses>"
        f"<auth><announce>forUnauthorizedAddresses</announce>{CLEAR}</auth>",
        "legacy": f"<authRequired>true</authRequired><auth>{CLEAR}</auth>",
        "relaxed": f"<verifyIdentity>relaxed</verifyIdentity><auth><announce>always</announce>"
        f"{CLEAR}</auth>",
        "disabled": f"<verifyIdentity>disabled</verifyIdentity><auth><announce>always</announce>"
        f"{CLEAR}</auth>",
        "noplain": f"<auth><announce>always</announce><plainAuthEnabled>false</plainAuthEnabled>"
        f"{CLEAR}</auth>",
    }
    (conf / "smtpserver.xml").write_text(
        "<smtpservers>"
        + "".join(listener(name, ports[name], bodies[name]) for name in LISTENERS)
        + "</smtpservers>"
    )
    (conf / "domainlist.xml").write_text(DOMAINLIST)
    # a name server that never answers: relayed mail stays in RemoteDelivery's outgoing
    # queue (a temporary DNS failure defers it), neither sent nor bounced
    (conf / "dnsservice.xml").write_text(DEAD_DNS)
    (conf / "usersrepository.xml").write_text(
        "<usersrepository><enableVirtualHosting>true</enableVirtualHosting>"
        f"<administratorIds><administratorId>{ADMIN}</administratorId></administratorIds>"
        "</usersrepository>"
    )
    kw = Kittiwake(conf=conf, data=base / "data", port=ports["mx"], log=base / "kittiwake.log")
    if workers > 1:
        kw.env["KITTIWAKE_WORKERS"] = str(workers)
    for user, password in PASSWORD.items():
        kw.add_user(user, password)
    for args in (
        ("sales@kittiwake.test", ALICE),
        ("@alias.test", "@kittiwake.test"),
        ("--type", "forward", "bob@kittiwake.test", "bob@elsewhere.test"),
        ("--type", "forward", "bob@kittiwake.test", BOB),
    ):
        done = kw.cli("alias", "add", *args)
        assert done.returncode == 0, done.stderr
    return AuthServer(kw, ports, cert)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    srv = make_server(tmp_path_factory.mktemp("auth"))
    srv.kw.start()
    for name, port in srv.ports.items():
        if name != "smtps":  # implicit TLS: no greeting before a handshake
            wait_for_port(port, srv.kw.proc)  # type: ignore[arg-type]
    yield srv
    assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]


class Client(RawSmtp):
    """A raw SMTP client: exact octets, one reply at a time, STARTTLS and TLS."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", tls: bool = False) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        super().__init__(_ctx().wrap_socket(raw) if tls else raw)
        self.greeting = self.reply()

    def reply(self) -> str:
        return self.read_text()

    def ehlo(self, name: str = "client.example") -> list[str]:
        return [line[4:] for line in self.cmd(f"EHLO {name}").splitlines()]

    def starttls(self) -> None:
        assert self.cmd("STARTTLS").startswith("220 ")
        self.sock = _ctx().wrap_socket(self.sock)

    def login(self, user: str = ALICE, password: str | None = None) -> str:
        return self.cmd(f"AUTH PLAIN {plain(user, password or PASSWORD[user])}")

    def send(self, sender: str, rcpt: str, text: str) -> str:
        for line, want in ((f"MAIL FROM:<{sender}>", "250"), (f"RCPT TO:<{rcpt}>", "250")):
            got = self.cmd(line)
            assert got.startswith(want), (line, got)
        assert self.cmd("DATA").startswith("354")
        self.sock.sendall(text.encode().replace(b"\n", b"\r\n") + b".\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.cmd("QUIT")
        self.sock.close()


def _ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def code(reply: str) -> str:
    """``550 5.7.1`` from a reply."""
    return " ".join(reply.split(" ")[:2])


# ---- 4. the relay rule, every trick -------------------------------------------------

# (recipient as written in RCPT TO, unauthenticated without AUTH announced (mx),
#  unauthenticated with AUTH announced (clear), authenticated (clear), trusted)
TRICKS = [
    ("victim@remote.test", "550 5.7.1", "530 5.7.0", "250 2.1.5", "250 2.1.5"),
    ("victim@REMOTE.TEST", "550 5.7.1", "530 5.7.0", "250 2.1.5", "250 2.1.5"),
    ("victim%remote.test@kittiwake.test", "550 5.7.1", "530 5.7.0", "550 5.1.1", "550 5.1.1"),
    ("remote.test!victim@kittiwake.test", "550 5.7.1", "530 5.7.0", "550 5.1.1", "550 5.1.1"),
    ('"victim@remote.test"@kittiwake.test', "550 5.7.1", "530 5.7.0", "550 5.1.1", "550 5.1.1"),
    ('"victim%remote.test"@kittiwake.test', "550 5.7.1", "530 5.7.0", "550 5.1.1", "550 5.1.1"),
    ("@kittiwake.test:victim@remote.test", "550 5.7.1", "530 5.7.0", "250 2.1.5", "250 2.1.5"),
    ("@a.test,@b.test:victim@remote.test", "550 5.7.1", "530 5.7.0", "250 2.1.5", "250 2.1.5"),
    ("victim@remote.test@kittiwake.test", *["501 5.1.3"] * 4),
    ("victim@[192.0.2.1]", "550 5.7.1", "530 5.7.0", "550 5.7.1", "550 5.7.1"),
    ("victim@[127.0.0.1]", "550 5.7.1", "530 5.7.0", "550 5.7.1", "550 5.7.1"),
    ("victim@[IPv6:::1]", "550 5.7.1", "530 5.7.0", "550 5.7.1", "550 5.7.1"),
    ("victim@remote.test.", *["501 5.1.3"] * 4),
    ("alice@kittiwake.test.", *["501 5.1.3"] * 4),
    ("alice@KITTIWAKE.TEST", *["250 2.1.5"] * 4),  # local: never needs AUTH
    ("sales@kittiwake.test", *["250 2.1.5"] * 4),  # an alias of alice
    ("alice@alias.test", *["250 2.1.5"] * 4),  # a domain alias
    ("nobody@kittiwake.test", *["550 5.1.1"] * 4),
    ("postmaster", *["250 2.1.5"] * 4),
]


@pytest.mark.parametrize(
    "rcpt, stranger, announced, authenticated, trusted", TRICKS, ids=[t[0] for t in TRICKS]
)
def test_relay_tricks(
    server: AuthServer, rcpt: str, stranger: str, announced: str, authenticated: str, trusted: str
) -> None:
    sessions = [
        (stranger, Client(server.ports["mx"]), False),
        (announced, Client(server.ports["clear"]), False),
        (authenticated, Client(server.ports["clear"]), True),
        (trusted, Client(server.ports["trusted"], source="127.0.0.2"), False),
    ]
    for want, c, login in sessions:
        c.ehlo()
        if login:
            assert c.login().startswith("235 2.7.0")
        sender = ALICE if login else "someone@remote.example"
        assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250")
        got = c.cmd(f"RCPT TO:<{rcpt}>")
        assert code(got) == want, (rcpt, got)
        c.close()


def test_relayed_mail_stays_queued(server: AuthServer) -> None:
    """Accepted for relay (authenticated, or from a trusted address): durably queued
    for RemoteDelivery, never dropped, never bounced."""
    c = Client(server.ports["clear"])
    c.ehlo()
    assert c.login().startswith("235")
    reply = c.send(ALICE, "far@remote.test", "From: alice@kittiwake.test\nSubject: far\n\nx\n")
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    qid = reply.rsplit(" ", 1)[1]
    c.close()
    t = Client(server.ports["trusted"], source="127.0.0.2")
    t.ehlo("relay.example")
    reply = t.send("app@remote.example", "far2@remote.test", "Subject: far2\n\nx\n")
    qid2 = reply.rsplit(" ", 1)[1]
    t.close()
    for queue_id, rcpt in ((qid, "far@remote.test"), (qid2, "far2@remote.test")):
        assert rcpt in kept_for_remote_delivery(server, queue_id)
    log = server.kw.log_text()
    for queue_id in (qid, qid2):
        assert f"{queue_id}: queued for remote delivery as outgoing/" in log
        assert not re.search(rf"{queue_id}\S*: to=<far2?@remote.test>, status=failed", log)
        assert "relay-denied" not in log


def kept_for_remote_delivery(server: AuthServer, queue_id: str, timeout: float = 10.0) -> str:
    """The envelope of ``queue_id`` (or a part of it) kept for RemoteDelivery: its
    outgoing queue is DATA/repositories/outgoing."""
    outgoing = server.kw.data / "repositories" / "outgoing"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(outgoing.glob(f"{queue_id}*.json")) if outgoing.is_dir() else []
        if found:
            assert sorted(outgoing.glob(f"{queue_id}*.eml"))  # the message itself too
            return "".join(p.read_text() for p in found)
        time.sleep(0.05)
    raise AssertionError(f"{queue_id}: not kept for RemoteDelivery")


# ---- 2. AUTH with real clients ------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_swaks(server: AuthServer, mechanism: str, mode: str) -> None:
    swaks = need("swaks")
    subject = f"swaks-{mechanism}-{mode}"
    tls = (
        ["--server", f"127.0.0.1:{server.ports['submission']}", "--tls"]
        if mode == "starttls"
        else ["--server", f"127.0.0.1:{server.ports['smtps']}", "--tls-on-connect"]
    )
    result = subprocess.run(
        [swaks, *tls, "--auth", mechanism, "--auth-user", ALICE,
         "--auth-password", PASSWORD[ALICE], "--from", ALICE, "--to", BOB,
         "--header", f"Subject: {subject}", "--header", f"From: {ALICE}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    head = server.message(BOB, subject).split(b"\r\n\r\n", 1)[0].decode()
    assert " with ESMTPSA id " in head, head


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_curl(server: AuthServer, tmp_path: Path, mechanism: str, mode: str) -> None:
    curl = need("curl")
    subject = f"curl-{mechanism}-{mode}"
    body = tmp_path / "mail.txt"
    body.write_text(f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\nhello\r\n")
    url = (
        ["--ssl-reqd", f"smtp://127.0.0.1:{server.ports['submission']}"]
        if mode == "starttls"
        else [f"smtps://127.0.0.1:{server.ports['smtps']}"]
    )
    result = subprocess.run(
        [curl, "-sS", "-v", *url, "--insecure", "--login-options", f"AUTH={mechanism}",
         "--user", f"{ALICE}:{PASSWORD[ALICE]}", "--mail-from", ALICE, "--mail-rcpt", BOB,
         "--upload-file", str(body)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"AUTH {mechanism}" in result.stderr
    assert "235 2.7.0" in result.stderr
    msg = server.message(BOB, subject)
    assert b" with ESMTPSA id " in msg


def test_curl_relays_once_authenticated(server: AuthServer, tmp_path: Path) -> None:
    curl = need("curl")
    body = tmp_path / "mail.txt"
    body.write_text(f"From: {ALICE}\r\nSubject: curl-relay\r\n\r\nhello\r\n")
    base = ["-sS", f"smtps://127.0.0.1:{server.ports['smtps']}", "--insecure"]
    common = ["--mail-from", ALICE, "--mail-rcpt", "far@remote.test", "--upload-file", str(body)]
    denied = subprocess.run([curl, *base, *common], capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0  # auth.required: MAIL without AUTH is 530
    ok = subprocess.run(
        [curl, *base, "--user", f"{ALICE}:{PASSWORD[ALICE]}", *common],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_wrong_password_with_swaks(server: AuthServer) -> None:
    swaks = need("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.ports['smtps']}", "--tls-on-connect",
         "--auth", "LOGIN", "--auth-user", BOB, "--auth-password", "not-it",
         "--from", BOB, "--to", ALICE],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in result.stdout
    log = server.kw.log_text()
    assert re.search(r"AUTH LOGIN failed for user='bob@kittiwake.test' from \[127\.0\.0\.1\]", log)
    assert "not-it" not in log and b64("not-it") not in log  # never the password


# ---- 5. the 538 path, and auth.required ---------------------------------------------


def test_538_on_clear_text_until_starttls(server: AuthServer) -> None:
    c = Client(server.ports["submission"])
    keywords = c.ehlo()
    assert "STARTTLS" in keywords
    assert not any(k.startswith("AUTH") for k in keywords)  # not announced on clear text
    assert code(c.login()) == "538 5.7.11"
    assert code(c.cmd(f"AUTH LOGIN {b64(ALICE)}")) == "538 5.7.11"
    assert code(c.cmd("MAIL FROM:<someone@remote.example>")) == "530 5.7.0"  # auth.required
    c.starttls()
    keywords = c.ehlo()
    assert "AUTH PLAIN LOGIN" in keywords and "STARTTLS" not in keywords
    assert code(c.login()) == "235 2.7.0"
    assert "AUTH PLAIN LOGIN" not in c.ehlo()  # no more AUTH to offer once logged in
    assert code(c.login()) == "503 5.5.1"
    assert code(c.cmd("STARTTLS")) == "503 5.5.1"
    c.close()


def test_every_reply_code(server: AuthServer) -> None:
    """RFC 4954's codes: 334, 235, 501 (cancel, base64), 504, 534, 535, 503."""
    c = Client(server.ports["clear"])
    c.ehlo()
    assert c.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"
    assert c.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert c.cmd("*") == "501 5.7.0 Authentication cancelled"
    assert c.cmd("AUTH PLAIN") == "334 "
    assert code(c.cmd("$$$")) == "501 5.5.2"
    assert code(c.cmd("AUTH PLAIN =")) == "501 5.5.2"
    assert code(c.login(ALICE, "wrong")) == "535 5.7.8"
    assert code(c.cmd("MAIL FROM:<x@remote.example> AUTH=<>")) == "250 2.1.0"  # RFC 4954 5
    assert code(c.login()) == "503 5.5.1"  # not in a transaction
    assert code(c.cmd("RSET")) == "250 2.0.0"
    assert c.cmd(f"AUTH LOGIN {b64(ALICE)}") == "334 UGFzc3dvcmQ6"
    assert code(c.cmd(b64(PASSWORD[ALICE]))) == "235 2.7.0"
    assert code(c.cmd(f"MAIL FROM:<{ALICE}> AUTH={ALICE}")) == "250 2.1.0"
    c.close()
    n = Client(server.ports["noplain"])
    n.ehlo()
    assert code(n.login()) == "534 5.7.9"
    n.close()
    mx = Client(server.ports["mx"])
    mx.ehlo()
    assert code(mx.login()) == "500 5.5.1"  # NoAuthCmdHandlerLoader: no AUTH command
    mx.close()


def test_authorization_identity(server: AuthServer) -> None:
    c = Client(server.ports["clear"])
    c.ehlo()
    assert code(c.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD[ALICE], authzid=BOB)}")) == "535 5.7.8"
    assert code(c.cmd(f"AUTH PLAIN {plain(ADMIN, PASSWORD[ADMIN], authzid=BOB)}")) == "235 2.7.0"
    # acting as bob: bob's identity, not the admin's
    assert code(c.cmd(f"MAIL FROM:<{BOB}>")) == "250 2.1.0"
    c.close()


def test_three_failures_end_the_connection(server: AuthServer) -> None:
    c = Client(server.ports["clear"])
    c.ehlo()
    assert code(c.login(ALICE, "one")) == "535 5.7.8"
    assert code(c.login(ALICE, "two")) == "535 5.7.8"
    assert c.login(ALICE, "three") == "421 4.7.0 Too many failed authentication attempts"
    assert c.reply() == ""  # closed
    c.sock.close()


# ---- 3. each auth.announce mode, as the EHLO reply shows it ----------------------------


@pytest.mark.parametrize(
    "name, source, shown",
    [
        ("mx", "127.0.0.1", False),  # no AUTH command at all
        ("never", "127.0.0.1", False),
        ("clear", "127.0.0.1", True),  # always
        ("trusted", "127.0.0.1", True),  # forUnauthorizedAddresses, an untrusted client
        ("trusted", "127.0.0.2", False),  # ... and a trusted one
        ("legacy", "127.0.0.1", True),  # authRequired true = forUnauthorizedAddresses
        ("submission", "127.0.0.1", False),  # requireSSL: not before STARTTLS
        ("noplain", "127.0.0.1", False),  # no mechanism to offer
    ],
)
def test_announce(server: AuthServer, name: str, source: str, shown: bool) -> None:
    c = Client(server.ports[name], source=source)
    keywords = c.ehlo()
    assert ("AUTH PLAIN LOGIN" in keywords) is shown, keywords
    helo = c.cmd("HELO client.example")
    assert helo.startswith("250 ") and "AUTH" not in helo  # never in a HELO reply
    c.close()


def test_announce_on_implicit_tls(server: AuthServer) -> None:
    c = Client(server.ports["smtps"], tls=True)
    assert "AUTH PLAIN LOGIN" in c.ehlo()
    c.close()


# ---- 3. verifyIdentity: strict, relaxed, disabled --------------------------------------


def test_identity_strict(server: AuthServer) -> None:
    c = Client(server.ports["clear"])
    c.ehlo("mx.remote.example")
    assert code(c.cmd(f"MAIL FROM:<{ALICE}>")) == "530 5.7.0"  # a local sender: log in
    assert code(c.cmd("MAIL FROM:<>")) == "250 2.1.0"  # never the null sender
    c.cmd("RSET")
    assert code(c.login()) == "235 2.7.0"
    assert code(c.cmd(f"MAIL FROM:<{BOB}>")) == "550 5.7.1"
    assert code(c.cmd("MAIL FROM:<alice@remote.example>")) == "550 5.7.1"  # not local
    assert code(c.cmd("MAIL FROM:<Sales@KITTIWAKE.test>")) == "250 2.1.0"  # alice's alias
    c.cmd("RSET")
    assert code(c.cmd("MAIL FROM:<alice@alias.test>")) == "250 2.1.0"  # domain alias
    c.cmd("RSET")
    # the From: header too, with the user's aliases
    assert code(c.send(ALICE, BOB, f"From: {BOB}\nSubject: id1\n\nx\n")) == "550 5.7.1"
    assert code(c.send(ALICE, BOB, "Subject: id2\n\nno From\n")) == "550 5.7.1"
    ok = c.send(ALICE, BOB, "From: Sales <sales@kittiwake.test>\nSubject: id3\n\nx\n")
    assert code(ok) == "250 2.0.0"
    # never applied to the null sender, whatever its From:
    bounce = c.send("", BOB, "From: MAILER-DAEMON@elsewhere.test\nSubject: id4\n\nx\n")
    assert code(bounce) == "250 2.0.0"
    c.close()
    server.message(BOB, "id3")
    server.no_message(BOB, "id1")


def test_identity_strict_trusted_address(server: AuthServer) -> None:
    t = Client(server.ports["trusted"], source="127.0.0.2")
    t.ehlo("client")
    assert code(t.cmd(f"MAIL FROM:<{ALICE}>")) == "250 2.1.0"  # trusted: may use local senders
    t.close()


def test_identity_relaxed(server: AuthServer) -> None:
    c = Client(server.ports["relaxed"])
    c.ehlo("client")  # does not look like a mail server
    assert code(c.cmd(f"MAIL FROM:<{ALICE}>")) == "530 5.7.0"
    c.ehlo("mx.remote.example")  # looks like one: accepted
    assert code(c.cmd(f"MAIL FROM:<{ALICE}>")) == "250 2.1.0"
    c.cmd("RSET")
    assert code(c.login(BOB)) == "235 2.7.0"
    assert code(c.cmd(f"MAIL FROM:<{ALICE}>")) == "550 5.7.1"  # authenticated: strict
    c.close()


def test_identity_disabled(server: AuthServer) -> None:
    c = Client(server.ports["disabled"])
    c.ehlo("client")
    assert code(c.cmd(f"MAIL FROM:<{ALICE}>")) == "250 2.1.0"
    c.cmd("RSET")
    assert code(c.login(BOB)) == "235 2.7.0"
    assert code(c.send(ALICE, BOB, f"From: {ALICE}\nSubject: dis\n\nx\n")) == "250 2.0.0"
    # relaying still needs AUTH: disabled identity checks open nothing
    c.close()
    d = Client(server.ports["disabled"])
    d.ehlo("client")
    d.cmd(f"MAIL FROM:<{ALICE}>")
    assert code(d.cmd("RCPT TO:<victim@remote.test>")) == "530 5.7.0"
    d.close()


# ---- 6. submission: Date and Message-ID --------------------------------------------------


def test_submission_adds_date_and_message_id(server: AuthServer) -> None:
    c = Client(server.ports["clear"])
    c.ehlo()
    assert code(c.login()) == "235 2.7.0"
    assert code(c.send(ALICE, BOB, f"From: {ALICE}\nSubject: sub1\n\nbody\n")) == "250 2.0.0"
    kept = f"From: {ALICE}\nDate: Thu, 1 Jan 2026 00:00:00 +0000\nMessage-ID: <k@x>\n"
    assert code(c.send(ALICE, BOB, kept + "Subject: sub2\n\nbody\n")) == "250 2.0.0"
    c.close()
    head = server.message(BOB, "sub1").split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"^Date: \w\w\w, \d\d \w\w\w \d{4} ", head, re.M), head
    assert re.search(r"^Message-ID: <\w+\.[\w.]+@mx\.kittiwake\.test>\r?$", head, re.M), head
    head2 = server.message(BOB, "sub2").split(b"\r\n\r\n", 1)[0].decode()
    assert head2.count("Message-ID:") == 1 and "<k@x>" in head2
    assert head2.count("Date:") == 1
    # unauthenticated mail is not touched
    u = Client(server.ports["mx"])
    u.ehlo()
    assert code(u.send("x@remote.example", BOB, "Subject: sub3\n\nbody\n")) == "250 2.0.0"
    u.close()
    head3 = server.message(BOB, "sub3").split(b"\r\n\r\n", 1)[0].decode()
    assert "Message-ID:" not in head3


# ---- 1. aliases: RCPT, identity and delivery all see them -------------------------------


def test_aliases_delivered(server: AuthServer) -> None:
    c = Client(server.ports["mx"])
    c.ehlo()
    for rcpt, subject in (("sales@kittiwake.test", "al1"), ("Alice@Alias.test", "al2")):
        assert code(c.send("x@remote.example", rcpt, f"Subject: {subject}\n\nx\n")) == "250 2.0.0"
    reply = c.send("x@remote.example", BOB, "Subject: al3\n\nx\n")
    qid = reply.rsplit(" ", 1)[1]
    c.close()
    server.message(ALICE, "al1")
    server.message(ALICE, "al2")
    server.message(BOB, "al3")  # the forward keeps a copy for bob
    # delivery applied the rewrite table too (the container's RecipientRewriteTable)
    rewritten = [ln for ln in server.kw.log_text().splitlines() if f"{qid}: rewritten" in ln]
    assert rewritten and "bob@elsewhere.test" in rewritten[0]


def test_forwarded_copy_is_kept_for_remote_delivery(server: AuthServer) -> None:
    """An anonymous sender's mail to a forward alias: the local copy is delivered, the
    remote target leaves as a new mail (own queue ID, SentByMailet) that the default
    transport relays, as James does; the client itself still cannot relay."""
    c = Client(server.ports["mx"])
    c.ehlo()
    reply = c.send("x@remote.example", BOB, "Subject: al4\n\nx\n")
    qid = reply.rsplit(" ", 1)[1]
    # the relay rule is untouched: the forward's target itself is refused to this client
    assert code(c.cmd("MAIL FROM:<x@remote.example>")) == "250 2.1.0"
    assert code(c.cmd("RCPT TO:<bob@elsewhere.test>")) == "550 5.7.1"
    c.close()
    server.message(BOB, "al4")
    pattern = rf"{qid}: to bob@elsewhere.test: sent as a new mail (\w{{12}})"
    deadline = time.monotonic() + 10
    while not (found := re.search(pattern, server.kw.log_text())):
        assert time.monotonic() < deadline, server.kw.log_text()[-3000:]
    copy = found.group(1)
    assert copy != qid
    envelope = json.loads(kept_for_remote_delivery(server, copy))
    assert envelope["recipients"] == ["bob@elsewhere.test"]
    assert envelope["sender"] == "x@remote.example"  # no SRS, as James (docs/mailets.md)
    log = server.kw.log_text()
    assert f"{copy}: queued for remote delivery as outgoing/" in log
    assert not re.search(rf"{qid}: to=<{BOB}>, status=failed", log)
    assert "relay-denied" not in log


# ---- 1. James users imported, re-hashed to argon2id at login -----------------------------


def test_imported_james_user_is_rehashed_at_login(server: AuthServer) -> None:
    # James's AlgorithmTest: PBKDF2-SHA512 of "myPassword" with salt "salt"
    james = (
        "uakKCXTKBGN1JxbE0bAuLKn8Bzkf+NU9J+2l50tqJlZYzXNe86EJ2jEXkI1Fp1uy2sXLfOrSxCFT/fQRPxgZmw=="
    )
    done = server.kw.cli("user", "import", "--domain", "kittiwake.test", stdin=f"salt {james}\n")
    assert done.returncode == 0, done.stderr
    db = server.kw.data / "kittiwake.db"

    def stored() -> str:
        with sqlite3.connect(db) as conn:
            return str(
                conn.execute(
                    "SELECT password_hash FROM users WHERE name = 'salt@kittiwake.test'"
                ).fetchone()[0]
            )

    assert stored().startswith("$james$PBKDF2-SHA512/plain$")
    time.sleep(0.3)  # the server's user cache (0.25 s)
    c = Client(server.ports["clear"])
    c.ehlo()
    assert code(c.login("salt@kittiwake.test", "wrong")) == "535 5.7.8"
    assert code(c.login("salt@kittiwake.test", "myPassword")) == "235 2.7.0"
    c.close()
    assert stored().startswith("$argon2id$")
    time.sleep(0.3)
    again = Client(server.ports["clear"])
    again.ehlo()
    assert code(again.login("salt@kittiwake.test", "myPassword")) == "235 2.7.0"
    again.close()


# ---- 5. the per-IP failure budget, across two worker processes --------------------------


def test_failure_budget_across_workers(tmp_path: Path) -> None:
    budget = "<ipFailureLimit>4</ipFailureLimit><ipFailureWindow>600</ipFailureWindow>"
    srv = make_server(tmp_path, budget=budget, workers=2)
    srv.kw.start()
    try:
        port = srv.ports["clear"]
        wait_for_port(port, srv.kw.proc)  # type: ignore[arg-type]
        for n in range(4):  # one failure per connection: no 421, only the address counts
            c = Client(port)
            c.ehlo()
            assert code(c.login(ALICE, f"wrong{n}")) == "535 5.7.8"
            c.close()
        failed = pids(srv.kw.log_text(), "AUTH PLAIN failed")
        assert "blocked from AUTH for 600 s: 4 failures" in srv.kw.log_text()
        # The budget is spent: the right password gets 454 now, on any connection and in
        # either worker. Shared it is if the failures were split between the workers (no
        # one of them saw 4), or if a worker that saw none refuses.
        refused: set[str] = set()
        for _ in range(40):
            c = Client(port)
            c.ehlo()
            assert c.login() == (
                "454 4.7.0 Too many failed authentications from your address, try later"
            )
            c.close()
            refused = pids(srv.kw.log_text(), "too many failures from this address")
            if len(failed) >= 2 or refused - failed:
                break
        assert len(failed) >= 2 or refused - failed, (failed, refused)
        # other listeners too: the budget is the address's
        c = Client(srv.ports["smtps"], tls=True)
        c.ehlo()
        assert code(c.login()) == "454 4.7.0"
        c.close()
        # and another address is not concerned
        other = Client(port, source="127.0.0.3")
        other.ehlo()
        assert code(other.login()) == "235 2.7.0"
        other.close()
    finally:
        assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]


def pids(log: str, what: str) -> set[str]:
    """The worker processes (the session id's first part) that logged ``what``."""
    found = set()
    for line in log.splitlines():
        m = re.search(r" (\w+)\.\w+: ", line)
        if m and what in line:
            found.add(m.group(1))
    return found
