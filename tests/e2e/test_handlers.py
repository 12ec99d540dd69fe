"""Issue 3, point 5: every provided handler end to end over SMTP, a custom Python hook
loaded from the configuration, and the relay rule that no hook's OK can open.

One kittiwake process with one listener per chain (so that one start serves every
test), DNS answers from the loopback DNS server the tests start (``tests/kw_dns.py``),
and clients that connect from different loopback addresses (127.0.0.x) so that
address-based handlers (RBL, spam trap, greylisting, rate limits) see distinct clients.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kw_dns import TestDns

from .conftest import DOMAINLIST, Kittiwake, free_port
from .raw_smtp import RawSmtp

pytestmark = pytest.mark.timeout(60)

RBL = """
  <handler class="org.apache.james.smtpserver.fastfail.DNSRBLHandler">
    <getDetail>true</getDetail>
    <rblservers>
      <whitelist>wl.kw.test.</whitelist>
      <blacklist>bl.kw.test.</blacklist>
    </rblservers>
  </handler>"""
CHAINS = {
    "rbl": RBL,
    "helo": '<handler class="org.apache.james.smtpserver.fastfail.ResolvableEhloHeloHandler"/>',
    "reverse": '<handler class="org.apache.james.smtpserver.fastfail.'
    'ReverseEqualsEhloHeloHandler"/>',
    "sender": '<handler class="org.apache.james.smtpserver.fastfail.ValidSenderDomainHandler"/>',
    "spf": """
  <handler class="org.apache.james.smtpserver.fastfail.SPFHandler">
    <blockSoftFail>false</blockSoftFail>
    <blockPermError>true</blockPermError>
  </handler>""",
    "maxrcpt": """
  <handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler">
    <enableRecipientRewriteTable>true</enableRecipientRewriteTable>
    <recipientRewriteTableCheck>anyMappingValid</recipientRewriteTableCheck>
  </handler>
  <handler class="org.apache.james.smtpserver.fastfail.MaxRcptHandler">
    <maxRcpt>2</maxRcpt>
  </handler>
  <handler class="org.apache.james.smtpserver.CoreCmdHandlerLoader"/>""",
    "unknown": """
  <handler class="org.apache.james.smtpserver.fastfail.MaxUnknownCmdHandler">
    <maxUnknownCmdCount>2</maxUnknownCmdCount>
  </handler>""",
    "trap": """
  <handler class="org.apache.james.smtpserver.fastfail.SpamTrapHandler">
    <spamTrapRecip>trap@kittiwake.test</spamTrapRecip>
    <blockTime>60000</blockTime>
  </handler>""",
    "grey": """
  <handler class="org.apache.james.smtpserver.fastfail.JDBCGreylistHandler">
    <tempBlockTime>1 second</tempBlockTime>
    <autoWhiteListLifeTime>36 days</autoWhiteListLifeTime>
    <unseenLifeTime>4 hours</unseenLifeTime>
    <whitelistedNetworks>127.0.2.0/24</whitelistedNetworks>
  </handler>""",
    "headers": """
  <handler class="org.apache.james.smtpserver.EnforceHeaderLimitationsMessageHook">
    <maxLines>6</maxLines>
    <maxSize>1K</maxSize>
  </handler>
  <handler class="org.apache.james.smtpserver.SetMimeHeaderHandler">
    <headername>X-Checked</headername>
    <headervalue>by kittiwake</headervalue>
  </handler>""",
    "lifespan": """
  <handler class="org.apache.james.smtpserver.netty.MaxConnectionLifespanHandler">
    <duration>700ms</duration>
  </handler>""",
    "allowed": """
  <handler class="org.apache.james.smtpserver.fastfail.AllowedUnauthenticatedSender">
    <allowNullSender>false</allowNullSender>
    <allowedSenders>
      <allowedSender>printer@kittiwake.test</allowedSender>
      <allowedSender fromIps="127.0.0.0/8">scanner@kittiwake.test</allowedSender>
    </allowedSenders>
  </handler>""",
    "ratelimit": """
  <handler class="RateLimitHandler">
    <connectionsPerMinute>3</connectionsPerMinute>
    <messagesPerHour>2</messagesPerHour>
    <recipientsPerHour>3</recipientsPerHour>
  </handler>""",
    "custom": """
  <handler class="myhooks.Tagger">
    <header>X-Tagged</header>
    <blockedSender>spammer@remote.test</blockedSender>
  </handler>
  <handler class="myhooks:Permissive"/>""",
}

#: listener options besides the chain
EXTRA = {
    "allowed": "<authorizedAddresses>127.0.5.0/24</authorizedAddresses>"
    "<verifyIdentity>false</verifyIdentity>",
}

MYHOOKS = '''
"""An administrator's own hooks (loaded from the configuration directory)."""

from kittiwake.hooks.api import Hook
from kittiwake.hooks.result import DECLINED, OK, HookResult
from kittiwake.protocol import Reply


class Tagger(Hook):
    mail_parameters = frozenset({"XTAG"})

    def __init__(self, options):
        super().__init__(options)
        self.header = options.text("header", "X-Tag")
        self.blocked = set(options.texts("blockedSender"))

    async def on_connect(self, session):
        if session.client_ip == "127.0.0.9":
            return HookResult.deny(Reply(554, "5.7.1", "No service for you"))
        return DECLINED

    async def on_mail_parameter(self, session, name, value):
        if value == "bad":
            return HookResult.deny(Reply(501, "5.5.4", "Bad XTAG"))
        session.state["xtag"] = value
        return DECLINED

    async def on_mail(self, session, mail):
        if mail.address in self.blocked:
            return HookResult.deny(Reply(550, "5.7.1", "Go away"), disconnect=True)
        return DECLINED

    async def on_rcpt(self, session, rcpt):
        if rcpt.address.startswith("crash@"):
            raise RuntimeError("a bug in the hook")
        return DECLINED

    async def on_message(self, session, message):
        message.add_header(self.header, session.state.get("xtag", "none"))
        return DECLINED


class Permissive(Hook):
    """Says OK to every sender and recipient: kittiwake must still refuse to relay and
    still check the sender's identity."""

    async def on_mail(self, session, mail):
        return OK

    async def on_rcpt(self, session, rcpt):
        return OK
'''


class Client(RawSmtp):
    """A raw SMTP client from a chosen loopback address."""

    reset_is_eof = True

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), 10, (source, 0)))
        self.greeting = self.reply()

    def reply(self, timeout: float = 10.0) -> str:
        return self.read_text(timeout)

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.kw.test") -> str:
        return self.cmd(f"EHLO {name}")

    def message(self, text: str) -> str:
        assert self.cmd("DATA").startswith("354"), "DATA refused"
        self.sock.sendall(text.replace("\n", "\r\n").encode() + b"\r\n.\r\n")
        return self.reply()


class Handlers:
    def __init__(self, kw: Kittiwake, ports: dict[str, int]) -> None:
        self.kw = kw
        self.ports = ports

    def delivered(self, address: str, token: bytes, timeout: float = 10.0) -> bytes:
        """The delivered message holding ``token``, once it is in the Maildir."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.kw.messages(address):
                if token in msg:
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"no message with {token!r} for {address}")

    def client(self, listener: str, source: str = "127.0.0.1") -> Client:
        return Client(self.ports[listener], source)

    def ready(
        self, listener: str, source: str = "127.0.0.1", helo: str = "client.kw.test"
    ) -> Client:
        c = self.client(listener, source)
        assert c.greeting.startswith("220"), c.greeting
        assert c.ehlo(helo).startswith("250"), helo
        return c


def _dns_records(dns: TestDns) -> None:
    # RBL: 127.0.0.2 listed; 127.0.0.3 listed but whitelisted; 127.0.0.4 not listed
    dns.add("2.0.0.127.bl.kw.test", "A", "127.0.0.2")
    dns.add("2.0.0.127.bl.kw.test", "TXT", "Listed: see https://bl.kw.test/127.0.0.2")
    dns.add("3.0.0.127.bl.kw.test", "A", "127.0.0.2")
    dns.add("3.0.0.127.wl.kw.test", "A", "127.0.0.2")
    # HELO names
    dns.add("good.kw.test", "A", "192.0.2.10")
    dns.add("v6only.kw.test", "AAAA", "2001:db8::10")
    dns.add("5.0.0.127.in-addr.arpa", "PTR", "host5.kw.test")
    # sender domains
    dns.add("mx.kw.test", "MX", "10 mail.mx.kw.test")
    dns.add("aonly.kw.test", "A", "192.0.2.20")
    dns.add("nullmx.kw.test", "MX", "0 .")
    dns.fail("broken.kw.test")
    # SPF
    dns.add("spf.kw.test", "TXT", "v=spf1 ip4:127.0.0.6 -all")
    dns.add("soft.kw.test", "TXT", "v=spf1 ip4:192.0.2.1 ~all")
    dns.fail("spftemp.kw.test")


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory, dns_server: TestDns) -> Iterator[Handlers]:
    tmp = tmp_path_factory.mktemp("handlers")
    conf = tmp / "conf"
    conf.mkdir()
    ports = {name: free_port() for name in CHAINS}
    servers = "".join(
        f"""
  <smtpserver enabled="true">
    <jmxName>{name}</jmxName>
    <bind>127.0.0.1:{ports[name]}</bind>
    <helloName autodetect="false">mx.kittiwake.test</helloName>{EXTRA.get(name, "")}
    <handlerchain>{chain}
    </handlerchain>
  </smtpserver>"""
        for name, chain in CHAINS.items()
    )
    (conf / "smtpserver.xml").write_text(
        f'<?xml version="1.0"?>\n<smtpservers>{servers}\n</smtpservers>\n'
    )
    (conf / "domainlist.xml").write_text(DOMAINLIST)
    (conf / "dnsservice.xml").write_text(dns_server.dnsservice_xml(timeout=2))
    (conf / "myhooks.py").write_text(MYHOOKS)
    _dns_records(dns_server)
    kw = Kittiwake(conf=conf, data=tmp / "data", port=ports["custom"], log=tmp / "kittiwake.log")
    for user in ("alice@kittiwake.test", "bob@kittiwake.test"):
        kw.add_user(user)
    kw.start()
    yield Handlers(kw, ports)
    code = kw.stop()
    assert code == 0, kw.log_text()[-3000:]


# ---- the relay rule no hook can open (point 5) --------------------------------------


def test_ok_from_a_custom_hook_does_not_open_relaying(handlers: Handlers) -> None:
    c = handlers.ready("custom")
    assert c.cmd("MAIL FROM:<someone@remote.test>").startswith("250 2.1.0")
    assert c.cmd("RCPT TO:<victim@elsewhere.test>").startswith("550 5.7.1")
    assert c.cmd("RCPT TO:<nobody@kittiwake.test>").startswith("550 5.1.1")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250 2.1.5")
    c.close()
    # verifyIdentity (strict by default): a local sender needs AUTH, whatever the OK
    forged = handlers.ready("custom")
    assert forged.cmd("MAIL FROM:<alice@kittiwake.test>").startswith("530 5.7.0")
    forged.close()


# ---- the custom hook: options, every hook point, failures ----------------------------


def test_custom_hook_from_the_configuration(handlers: Handlers) -> None:
    c = handlers.ready("custom")
    assert c.cmd("MAIL FROM:<a@remote.test> XTAG=bad").startswith("501 5.5.4 Bad XTAG")
    assert c.cmd("MAIL FROM:<a@remote.test> XTAG=blue").startswith("250")
    # a hook that raises: 451 4.3.0, and the session goes on
    assert c.cmd("RCPT TO:<crash@kittiwake.test>").startswith("451 4.3.0")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    assert c.message("Subject: tagged\n\nhello").startswith("250 2.0.0")
    assert c.cmd("QUIT").startswith("221")
    msg = handlers.delivered("bob@kittiwake.test", b"Subject: tagged")
    assert b"X-Tagged: blue\r\n" in msg
    assert "hook Tagger.on_rcpt failed" in handlers.kw.log_text()
    assert "a bug in the hook" in handlers.kw.log_text()


def test_custom_hook_denies_with_disconnect_and_at_connect(handlers: Handlers) -> None:
    c = handlers.ready("custom")
    assert c.cmd("MAIL FROM:<spammer@remote.test>").startswith("550 5.7.1 Go away")
    assert c.closed()
    refused = handlers.client("custom", "127.0.0.9")
    assert refused.greeting.startswith("554 5.7.1 No service for you")
    assert refused.closed()


def test_unknown_mail_parameter_is_still_refused(handlers: Handlers) -> None:
    c = handlers.ready("custom")
    assert c.cmd("MAIL FROM:<a@remote.test> XOTHER=1").startswith("555 5.5.4")
    c.close()


# ---- the provided handlers ------------------------------------------------------------


def test_dnsrbl_handler(handlers: Handlers) -> None:
    listed = handlers.ready("rbl", "127.0.0.2")
    assert listed.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    reply = listed.cmd("RCPT TO:<alice@kittiwake.test>")
    assert reply == "554 5.7.1 Listed: see https://bl.kw.test/127.0.0.2"
    assert listed.cmd("RCPT TO:<postmaster@kittiwake.test>").startswith("250")
    assert listed.cmd("RCPT TO:<abuse@kittiwake.test>").startswith("250")
    for source in ("127.0.0.3", "127.0.0.4"):  # whitelisted; not listed
        c = handlers.ready("rbl", source)
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250"), source


def test_resolvable_ehlo_helo_handler(handlers: Handlers) -> None:
    for helo, ok in (
        ("good.kw.test", True),
        ("v6only.kw.test", True),
        ("[127.0.0.1]", True),
        ("nowhere.kw.test", False),
    ):
        c = handlers.ready("helo", helo=helo)
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        reply = c.cmd("RCPT TO:<alice@kittiwake.test>")
        if ok:
            assert reply.startswith("250"), (helo, reply)
        else:
            assert reply == "501 5.5.4 Provided EHLO/HELO nowhere.kw.test can not be resolved"
        c.close()


def test_reverse_equals_ehlo_helo_handler(handlers: Handlers) -> None:
    good = handlers.ready("reverse", "127.0.0.5", helo="HOST5.kw.test")
    assert good.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert good.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    bad = handlers.ready("reverse", "127.0.0.5", helo="other.kw.test")
    assert bad.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert bad.cmd("RCPT TO:<alice@kittiwake.test>").startswith("501 5.5.4")
    no_ptr = handlers.ready("reverse", "127.0.0.4", helo="host5.kw.test")
    assert no_ptr.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert no_ptr.cmd("RCPT TO:<alice@kittiwake.test>").startswith("501 5.5.4")


def test_valid_sender_domain_handler(handlers: Handlers) -> None:
    c = handlers.ready("sender")
    for sender, want in (
        ("a@mx.kw.test", "250"),
        ("a@aonly.kw.test", "250"),  # implicit MX (RFC 5321 5.1)
        ("", "250"),  # the null sender is not checked
        ("a@nullmx.kw.test", "501 5.1.7"),  # RFC 7505
        ("a@nowhere.kw.test", "501 5.1.7"),
        ("a@broken.kw.test", "451 4.4.3"),  # SERVFAIL: try later
    ):
        reply = c.cmd(f"MAIL FROM:<{sender}>")
        assert reply.startswith(want), (sender, reply)
        c.cmd("RSET")


def test_spf_handler(handlers: Handlers) -> None:
    passing = handlers.ready("spf", "127.0.0.6")
    assert passing.cmd("MAIL FROM:<a@spf.kw.test>").startswith("250")
    assert passing.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    assert passing.message("Subject: spf\n\nhello").startswith("250")
    failing = handlers.ready("spf", "127.0.0.7")
    reply = failing.cmd("MAIL FROM:<a@spf.kw.test>")
    assert reply.startswith("554 5.7.1"), reply
    assert failing.cmd("MAIL FROM:<a@soft.kw.test>").startswith("250")  # blockSoftFail false
    failing.cmd("RSET")
    assert failing.cmd("MAIL FROM:<a@spftemp.kw.test>").startswith("451 4.4.3")
    spf = handlers.delivered("alice@kittiwake.test", b"Subject: spf")
    assert b"received-spf: pass (" in spf.lower()


def test_max_rcpt_and_valid_rcpt_handlers(handlers: Handlers) -> None:
    c = handlers.ready("maxrcpt")
    assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<nobody@kittiwake.test>").startswith("550 5.1.1")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    assert c.cmd("RCPT TO:<postmaster@kittiwake.test>").startswith("452 4.5.3")


def test_max_unknown_cmd_handler(handlers: Handlers) -> None:
    c = handlers.ready("unknown")
    assert c.cmd("FOO").startswith("500 5.5.1")
    assert c.cmd("BAR").startswith("500 5.5.1")
    assert c.cmd("NOOP").startswith("250")
    assert c.cmd("BAZ").startswith("521")
    assert c.closed()


def test_spam_trap_handler(handlers: Handlers) -> None:
    c = handlers.ready("trap", "127.0.0.8")
    assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    assert c.cmd("RCPT TO:<trap@kittiwake.test>").startswith("554")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("554")  # blocked now
    again = handlers.ready("trap", "127.0.0.8")
    assert again.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert again.cmd("RCPT TO:<alice@kittiwake.test>").startswith("554")
    other = handlers.ready("trap", "127.0.0.10")
    assert other.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert other.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")


def test_greylist_handler(handlers: Handlers) -> None:
    c = handlers.ready("grey", "127.0.1.1")
    assert c.cmd("MAIL FROM:<g@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("451 4.7.1")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("451 4.7.1")  # too soon
    time.sleep(1.1)
    # a neighbour in the same /24 retries: same triplet, accepted and whitelisted
    retry = handlers.ready("grey", "127.0.1.2")
    assert retry.cmd("MAIL FROM:<G@remote.test>").startswith("250")
    assert retry.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    assert retry.cmd("RCPT TO:<bob@kittiwake.test>").startswith("451 4.7.1")  # new triplet
    trusted = handlers.ready("grey", "127.0.2.1")  # whitelistedNetworks
    assert trusted.cmd("MAIL FROM:<g@remote.test>").startswith("250")
    assert trusted.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    assert (handlers.kw.data / "greylist.db").is_file()


def test_header_limits_and_set_mime_header(handlers: Handlers) -> None:
    c = handlers.ready("headers")
    assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    many = "".join(f"X-Line-{i}: {i}\n" for i in range(10))
    assert c.message(f"{many}Subject: many\n\nbody").startswith("552 5.3.4 Header Lines")
    assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    big = f"X-Big: {'b' * 2000}\n"
    assert c.message(f"{big}Subject: big\n\nbody").startswith("552 5.3.4 Header size")
    assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<bob@kittiwake.test>").startswith("250")
    text = "Subject: fine\nX-Checked: forged\n\nbody"
    assert c.message(text).startswith("250")
    fine = handlers.delivered("bob@kittiwake.test", b"Subject: fine")
    assert b"X-Checked: by kittiwake\r\n" in fine
    assert b"forged" not in fine


def test_max_connection_lifespan_handler(handlers: Handlers) -> None:
    c = handlers.ready("lifespan")
    started = time.monotonic()
    assert c.reply(timeout=5).startswith("421 4.4.2")
    assert 0.5 < time.monotonic() - started < 3
    assert c.closed()


def test_allowed_unauthenticated_sender(handlers: Handlers) -> None:
    # 127.0.5.0/24 may relay by address (authorizedAddresses), without AUTH: only the
    # listed senders, scanner@ only from 127.0.0.0/8
    trusted = handlers.ready("allowed", "127.0.5.1")
    for sender, want in (
        ("printer@kittiwake.test", "250"),
        ("scanner@kittiwake.test", "250"),
        ("someone@kittiwake.test", "550 5.7.1"),
        ("", "550 5.7.1"),  # allowNullSender false
    ):
        reply = trusted.cmd(f"MAIL FROM:<{sender}>")
        assert reply.startswith(want), (sender, reply)
        trusted.cmd("RSET")
    assert trusted.cmd("MAIL FROM:<printer@kittiwake.test>").startswith("250")
    assert trusted.cmd("RCPT TO:<someone@elsewhere.test>").startswith("250")  # it relays
    # an ordinary client is not affected (and may not relay)
    c = handlers.ready("allowed", "127.0.0.1")
    assert c.cmd("MAIL FROM:<anyone@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<alice@kittiwake.test>").startswith("250")
    assert c.cmd("RCPT TO:<someone@elsewhere.test>").startswith("550 5.7.1")


def test_rate_limits(handlers: Handlers) -> None:
    clients = [handlers.client("ratelimit", "127.0.3.1") for _ in range(3)]
    assert all(c.greeting.startswith("220") for c in clients)
    fourth = handlers.client("ratelimit", "127.0.3.1")
    assert fourth.greeting.startswith("421 4.7.0")
    assert fourth.closed()
    assert handlers.client("ratelimit", "127.0.3.9").greeting.startswith("220")  # other IP
    m = handlers.ready("ratelimit", "127.0.3.2")
    for _ in range(2):
        assert m.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert m.cmd("RSET").startswith("250")
    assert m.cmd("MAIL FROM:<a@remote.test>").startswith("450 4.7.1")
    r = handlers.ready("ratelimit", "127.0.3.3")
    assert r.cmd("MAIL FROM:<a@remote.test>").startswith("250")
    for rcpt in ("alice", "bob", "postmaster"):
        assert r.cmd(f"RCPT TO:<{rcpt}@kittiwake.test>").startswith("250")
    assert r.cmd("RCPT TO:<abuse@kittiwake.test>").startswith("450 4.7.1")


# ---- configuration errors stop the start ---------------------------------------------


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (
            '<handler class="org.apache.james.smtpserver.fastfail.URIRBLHandler"/>',
            "'URIRBLHandler' is not provided by kittiwake",
        ),
        ('<handler class="nosuchmodule.Hook"/>', "cannot import module 'nosuchmodule'"),
        (
            '<handler class="org.apache.james.smtpserver.fastfail.MaxRcptHandler">'
            "<maxRcpt>ten</maxRcpt></handler>",
            "<maxRcpt>: 'ten' is not an integer",
        ),
    ],
)
def test_a_bad_handler_stops_the_start(tmp_path: Path, handler: str, reason: str) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    port = free_port()
    (conf / "smtpserver.xml").write_text(
        f"<smtpservers><smtpserver><jmxName>smtp</jmxName><bind>127.0.0.1:{port}</bind>"
        f"<handlerchain>{handler}</handlerchain></smtpserver></smtpservers>"
    )
    kw = Kittiwake(conf=conf, data=tmp_path / "data", port=port, log=tmp_path / "log")
    result = kw.cli("config", "check")
    assert result.returncode == 2
    assert (
        'smtpserver.xml: <smtpserver name="smtp">/<handlerchain>/<handler class=' in result.stderr
    )
    assert reason in result.stderr
    kw.start(wait=False)
    assert kw.proc is not None and kw.proc.wait(timeout=30) == 2
    kw.proc = None
    assert reason in kw.log_text()


def test_rate_limits_hold_across_two_workers(tmp_path: Path) -> None:
    """Point 4: two worker processes share one listener; the limit is counted once."""
    from .conftest import make_kittiwake

    kw = make_kittiwake(
        tmp_path,
        '<handlerchain><handler class="RateLimitHandler">'
        "<connectionsPerMinute>6</connectionsPerMinute>"
        "<recipientsPerHour>10</recipientsPerHour></handler></handlerchain>",
        users=("alice@kittiwake.test",),
    )
    kw.env["KITTIWAKE_WORKERS"] = "2"
    kw.start()  # (the readiness probe comes from 127.0.0.1: another client)
    try:
        deadline = time.monotonic() + 15
        while kw.log_text().count("kittiwake ready") < 2:  # both workers accept
            assert time.monotonic() < deadline, kw.log_text()[-2000:]
            time.sleep(0.05)
        replies = []
        for _ in range(8):
            c = Client(kw.port, "127.0.4.1")
            replies.append(c.greeting[:9])
            c.close()
        # six in a minute, whichever worker accepted each
        assert replies == ["220 mx.ki"] * 6 + ["421 4.7.0"] * 2, replies
        log = kw.log_text()
        assert "worker 0 started" in log and "worker 1 started" in log
    finally:
        assert kw.stop() == 0
