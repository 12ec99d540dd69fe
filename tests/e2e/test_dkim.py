"""DKIM signing end to end (issue 8 point 4): keys made with ``kittiwake dkim keygen``,
their records published on the loopback DNS server, a mail submitted over SMTP with
AUTH relayed by the built-in flow to an aiosmtpd server on 127.0.0.2, and its
signatures checked by dkimpy with the keys looked up in DNS (dnspython, against that
server) — RSA and Ed25519; a mail from a domain without a key arrives unsigned."""

from __future__ import annotations

import contextlib
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import dns.rdatatype
import dns.resolver
import pytest
from aiosmtpd.controller import Controller

from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER
from kw_dns import TestDns

from .conftest import Kittiwake, free_port, make_kittiwake

ALICE = "alice@kittiwake.test"
DOMAIN = "kittiwake.test"
REMOTE = "dkim-e2e.test"


@dataclass
class Sink:
    """The destination: records each message as aiosmtpd got it (dot-stuffing removed)."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 queued"

    def wait(self, rcpt: str, timeout: float = 30.0) -> tuple[str, list[str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if rcpt in m[1]:
                        return m
            time.sleep(0.05)
        raise AssertionError(f"the destination got nothing for {rcpt}: {self.messages}")


def builtin_flow(port: int) -> str:
    """The built-in mailetcontainer.xml (DKIMSign, then RemoteDelivery), RemoteDelivery
    sending to ``port`` instead of 25."""
    start = DEFAULT_MAILETCONTAINER.index('<mailet match="All" class="RemoteDelivery">')
    assert '<mailet match="All" class="DKIMSign"/>' in DEFAULT_MAILETCONTAINER[:start]
    end = DEFAULT_MAILETCONTAINER.index("</mailet>", start)
    port_element = f"<mail.smtp.port>{port}</mail.smtp.port>"
    return DEFAULT_MAILETCONTAINER[:end] + port_element + DEFAULT_MAILETCONTAINER[end:]


@dataclass
class Setup:
    kw: Kittiwake
    sink: Sink
    dns: TestDns

    def submit(self, rcpt: str, from_header: str, subject: str, sender: str = ALICE) -> None:
        # a body with lines that SMTP dot-stuffs on each hop, and trailing space that
        # relaxed canonicalisation drops
        body = "hello\r\n.starts with a dot\r\n..\r\n.\tdot tab\r\ntrailing   \r\n.\r\n"
        message = (
            f"From: Alice <{from_header}>\r\nTo: <{rcpt}>\r\nCc: <cc@{REMOTE}>\r\n"
            f"Subject: {subject}\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\n"
            f"Message-ID: <{subject}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
        )
        with smtplib.SMTP("127.0.0.1", self.kw.port, timeout=10) as client:
            client.login(ALICE, "secret")
            client.sendmail(sender, [rcpt], message)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's lookup of a key record, made over the network to the test server."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.dns.port
        try:
            answer = resolver.resolve(name.decode(), dns.rdatatype.TXT, lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        # the record's character-strings joined (RFC 6376 3.6.2.2)
        return b"".join(answer[0].strings)

    def keygen(self, *args: str) -> str:
        """Run keygen, publish the record it prints; the record's name."""
        result = self.kw.cli("dkim", "keygen", *args)
        assert result.returncode == 0, result.stderr
        name = re.search(r"^name:\s+(\S+)$", result.stdout, re.M)
        value = re.search(r"^value:\s+(.+)$", result.stdout, re.M)
        assert name and value, result.stdout
        self.dns.add(name.group(1), "TXT", "".join(re.findall(r'"([^"]*)"', value.group(1))))
        return name.group(1)


@pytest.fixture
def setup(tmp_path: Path, dns_server: TestDns) -> Iterator[Setup]:
    sink = Sink()
    port = free_port("127.0.0.2")
    controller = Controller(sink, hostname="127.0.0.2", port=port)
    controller.start()
    dns_server.add(REMOTE, "MX", f"10 mx.{REMOTE}")
    dns_server.add(f"mx.{REMOTE}", "A", "127.0.0.2")
    kw = make_kittiwake(
        tmp_path,
        "<auth><announce>always</announce><requireSSL>false</requireSSL></auth>",
        users=(ALICE,),
    )
    (kw.conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml())
    # the built-in flow (DKIMSign, then RemoteDelivery to the test server's port)
    (kw.conf / "mailetcontainer.xml").write_text(builtin_flow(port))
    kw.start()
    try:
        yield Setup(kw, sink, dns_server)
    finally:
        with contextlib.suppress(AssertionError, RuntimeError):
            controller.stop()
        if kw.proc is not None:
            code = kw.stop()
            assert code == 0, kw.log_text()[-3000:]


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    out = []
    for i in range(len(re.findall(rb"^DKIM-Signature:", data, re.M))):
        checker = dkim.DKIM(data)
        checker.verify_headerprep(idx=i)
        out.append(checker.signature_fields)
    return out


def test_relayed_mail_is_signed_rsa_and_ed25519(setup: Setup) -> None:
    # keys made while the server runs: they sign at once
    rsa_name = setup.keygen(DOMAIN, "--selector", "rsa1")
    ed_name = setup.keygen(DOMAIN, "--selector", "ed1", "--algorithm", "ed25519")
    for name in (rsa_name, ed_name):  # the records are really served
        assert (setup.dnsfunc(name.encode()) or b"").startswith(b"v=DKIM1; k=")
    check = setup.kw.cli("dkim", "check", DOMAIN)  # through dnsservice.xml's server
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines() == [f"{ed_name}: published", f"{rsa_name}: published"]
    rcpt = f"carol@{REMOTE}"
    setup.submit(rcpt, ALICE, "signed")
    _, rcpts, data = setup.sink.wait(rcpt)
    assert rcpts == [rcpt]
    # unstuffed as it was written, up to the last line: a lone dot
    assert data.endswith(b"\r\n.starts with a dot\r\n..\r\n.\tdot tab\r\ntrailing   \r\n.\r\n")
    tags = signatures(data)
    assert sorted((t[b"s"], t[b"a"]) for t in tags) == [
        (b"ed1", b"ed25519-sha256"),
        (b"rsa1", b"rsa-sha256"),
    ]
    for i, t in enumerate(tags):
        assert t[b"d"] == DOMAIN.encode() and t[b"c"] == b"relaxed/relaxed"
        signed = set(re.split(rb"\s*:\s*", t[b"h"]))
        assert {b"from", b"to", b"cc", b"subject", b"date", b"message-id"} <= signed
        assert {b"mime-version", b"content-type"} <= signed
        assert dkim.DKIM(data).verify(idx=i, dnsfunc=setup.dnsfunc), f"signature {i}"
    assert dkim.verify(data, dnsfunc=setup.dnsfunc)
    # the same bytes with the body changed do not verify: the check is real
    with pytest.raises(dkim.ValidationError):
        dkim.DKIM(data.replace(b"hello", b"jello")).verify(idx=0, dnsfunc=setup.dnsfunc)
    assert f"DKIM-signed d={DOMAIN} s=ed1 (ed25519), d={DOMAIN} s=rsa1 (rsa-2048)" in (
        setup.kw.log_text()
    )


def test_mail_from_a_domain_without_a_key_arrives_unsigned(setup: Setup) -> None:
    # another domain has a key; alice's (the only one her From: may name) has none
    setup.keygen("other-e2e.test", "--selector", "rsa1")
    rcpt = f"dave@{REMOTE}"
    setup.submit(rcpt, ALICE, "unsigned")
    _, _, data = setup.sink.wait(rcpt)
    assert b"Subject: unsigned\r\n" in data
    assert b"DKIM-Signature" not in data
    assert not dkim.verify(data, dnsfunc=setup.dnsfunc)
    # MAIL FROM:<> skips verifyIdentity's From: check (RFC 5321 6.1 bounces, RFC 8098
    # MDNs): the mail is relayed, but not with the signature of a domain not alice's
    rcpt = f"erin@{REMOTE}"
    setup.submit(rcpt, "boss@other-e2e.test", "not hers", sender="")
    _, _, data = setup.sink.wait(rcpt)
    assert b"Subject: not hers\r\n" in data and b"DKIM-Signature" not in data
    assert "is not an address of the authenticated user" in setup.kw.log_text()


def test_check_tells_an_unpublished_or_wrong_record(setup: Setup) -> None:
    made = setup.kw.cli("dkim", "keygen", "unpublished-e2e.test")
    assert made.returncode == 0
    check = setup.kw.cli("dkim", "check", "unpublished-e2e.test")
    assert check.returncode == 1
    assert check.stdout == (
        "kittiwake._domainkey.unpublished-e2e.test: not published "
        "(kittiwake dkim show unpublished-e2e.test)\n"
    )
    setup.keygen("rotated-e2e.test")  # published, then replaced by a new key
    assert setup.kw.cli("dkim", "keygen", "rotated-e2e.test", "--force").returncode == 0
    check = setup.kw.cli("dkim", "check", "rotated-e2e.test")
    assert check.returncode == 1 and "WRONG KEY published" in check.stdout
