"""RemoteDelivery's parameters (issue 8, point 1) against aiosmtpd destinations: bind,
sslEnable, verifyServerIdentity, startTLS, onSuccess, usePriority; and the start stops
on any parameter kittiwake would not honour."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kittiwake.config._errors import ConfigError
from kittiwake.mailet.api import MailetError
from kittiwake.mailet.remote import SelfCheck
from kittiwake.tls import generate_self_signed
from kw_dns import TestDns

from .helpers import Harness, processors
from .remote_helpers import (
    ALICE,
    Context,
    Destination,
    deliver,
    mailet_with,
    make_mail,
    tls_server_context,
)


def _mx(dns: TestDns, domain: str, mx: str, host: str = "127.0.0.2") -> None:
    dns.add(domain, "MX", f"10 {mx}")
    dns.add(mx, "A", host)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"mail.smtp.auth": "true"}, "<mail.smtp.auth> is not a RemoteDelivery parameter"),
        ({"sslEnabled": "true"}, "<sslEnabled> is not a RemoteDelivery parameter"),
        ({"bind": "mx.example"}, "<bind>: 'mx.example' is not an IP address"),
        ({"bind": "192.0.2.55"}, "<bind>: cannot use 192.0.2.55 as a source address"),
        (
            {"verifyServerIdentity": "true", "startTLS": "false"},
            "<verifyServerIdentity> needs TLS",
        ),
        ({"sslTrustAllCerts": "false"}, "<sslTrustAllCerts> must be the opposite"),
        (
            {"sslTrustAllCerts": "true", "verifyServerIdentity": "true"},
            "<sslTrustAllCerts> must be the opposite",
        ),
        ({"trustedCertificates": "/etc/ssl/x.pem"}, "only used with verifyServerIdentity"),
        (
            {"verifyServerIdentity": "true", "trustedCertificates": "/nonexistent.pem"},
            "<trustedCertificates>: cannot load",
        ),
        ({"maxConnectionsPerDomain": "0"}, "<maxConnectionsPerDomain> must be between"),
        ({"sslEnable": "maybe"}, "<sslEnable>: 'maybe' is not true or false"),
        ({"timeout": "0"}, "<timeout> must be a positive"),
        ({"gatewayPort": "70000"}, "<gatewayPort>: 70000 is not a TCP port"),
    ],
)
def test_what_cannot_be_honoured_stops_the_start(
    tmp_path: Path, params: dict[str, str], reason: str
) -> None:
    with pytest.raises(MailetError, match=reason.replace("(", r"\(")):
        mailet_with(Context(tmp_path), **params)


def test_james_parameters_accepted(tmp_path: Path) -> None:
    mailet = mailet_with(
        Context(tmp_path),
        outgoingQueue="outgoing",
        sslTrustAllCerts="true",
        usePriority="true",
        debug="true",
        sslEnable="true",
        bind="127.0.0.3",
        heloName="relay.kittiwake.test",
        onSuccess="transport",
    )
    assert mailet.port == 465 and mailet.gateway_port == 465  # RFC 8314 implicit TLS
    assert mailet.client.implicit_tls and mailet.client.bind == "127.0.0.3"
    assert mailet.helo == "relay.kittiwake.test" and mailet.on_success == "transport"


def test_bind_sets_the_source_address(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination().start()
    try:
        _mx(dns_server, "bind.params.test", "mx.bind.params.test")
        ctx = Context(tmp_path)
        mailet = mailet_with(ctx, bind="127.0.0.3", **{"mail.smtp.port": str(dest.port)})
        mailet.service(make_mail("B1", ["carol@bind.params.test"]))
        deliver(mailet, dns_server)
        assert [m.peer for m in dest.messages] == ["127.0.0.3"]
        assert dest.peers == ["127.0.0.3"]
    finally:
        dest.stop()


def test_ssl_enable_is_implicit_tls(tmp_path: Path, dns_server: TestDns) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    generate_self_signed(key, cert, "mx.smtps.params.test")
    dest = Destination().start(ssl_context=tls_server_context(cert, key))
    try:
        _mx(dns_server, "smtps.params.test", "mx.smtps.params.test")
        ctx = Context(tmp_path)
        mailet = mailet_with(ctx, sslEnable="true", **{"mail.smtp.port": str(dest.port)})
        mailet.service(make_mail("S1", ["carol@smtps.params.test"]))
        deliver(mailet, dns_server)
        assert [(m.rcpts, m.tls) for m in dest.messages] == [(["carol@smtps.params.test"], True)]
    finally:
        dest.stop()


def test_start_tls_false_never_uses_it(tmp_path: Path, dns_server: TestDns) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    generate_self_signed(key, cert, "mx.clear.params.test")
    dest = Destination().start(tls_context=tls_server_context(cert, key))
    try:
        _mx(dns_server, "clear.params.test", "mx.clear.params.test")
        ctx = Context(tmp_path)
        plain = mailet_with(ctx, startTLS="false", **{"mail.smtp.port": str(dest.port)})
        plain.service(make_mail("T1", ["carol@clear.params.test"]))
        deliver(plain, dns_server)
        default = mailet_with(ctx, **{"mail.smtp.port": str(dest.port)})
        default.service(make_mail("T2", ["dave@clear.params.test"]))
        deliver(default, dns_server)
        assert [m.tls for m in dest.messages] == [False, True]  # opportunistic by default
    finally:
        dest.stop()


def test_verify_server_identity(
    tmp_path: Path, dns_server: TestDns, caplog: pytest.LogCaptureFixture
) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    generate_self_signed(key, cert, "mx.verify.params.test")
    dest = Destination().start(tls_context=tls_server_context(cert, key))
    # the same server under a name its certificate does not show
    _mx(dns_server, "good.verify.params.test", "mx.verify.params.test")
    _mx(dns_server, "wrong.verify.params.test", "alias.verify.params.test")
    try:
        ctx = Context(tmp_path)
        mailet = mailet_with(
            ctx,
            verifyServerIdentity="true",
            trustedCertificates=str(cert),
            delayTime="1 hour",
            **{"mail.smtp.port": str(dest.port)},
        )
        mailet.service(make_mail("V1", ["carol@good.verify.params.test"]))
        mailet.service(make_mail("V2", ["dave@wrong.verify.params.test"]))
        with caplog.at_level(logging.INFO, logger="kittiwake.remote"):
            deliver(mailet, dns_server, until=lambda: "deferred dave@" in caplog.text)
        assert [(m.rcpts, m.tls) for m in dest.messages] == [
            (["carol@good.verify.params.test"], True)
        ]
        assert "4.7.5 TLS certificate of alias.verify.params.test[127.0.0.2]" in caplog.text, (
            caplog.text
        )
        assert "not verified" in caplog.text and "Hostname mismatch" in caplog.text
        assert len(mailet.repo) == 1  # deferred, kept for the next attempt

        # a CA that did not sign it: deferred as well
        other_key, other = tmp_path / "k2.pem", tmp_path / "c2.pem"
        generate_self_signed(other_key, other, "mx.verify.params.test")
        strict = mailet_with(
            Context(tmp_path / "2"),
            verifyServerIdentity="true",
            trustedCertificates=str(other),
            delayTime="1 hour",
            **{"mail.smtp.port": str(dest.port)},
        )
        strict.service(make_mail("V3", ["erin@good.verify.params.test"]))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kittiwake.remote"):
            deliver(strict, dns_server, until=lambda: "deferred erin@" in caplog.text)
        assert "4.7.5 TLS certificate of mx.verify.params.test[127.0.0.2]" in caplog.text
        assert len(dest.messages) == 1
    finally:
        dest.stop()


def test_verify_server_identity_requires_starttls(
    tmp_path: Path, dns_server: TestDns, caplog: pytest.LogCaptureFixture
) -> None:
    dest = Destination().start()  # no TLS at all
    try:
        _mx(dns_server, "notls.params.test", "mx.notls.params.test")
        mailet = mailet_with(
            Context(tmp_path),
            verifyServerIdentity="true",
            delayTime="1 hour",
            **{"mail.smtp.port": str(dest.port)},
        )
        mailet.service(make_mail("N1", ["carol@notls.params.test"]))
        with caplog.at_level(logging.INFO, logger="kittiwake.remote"):
            deliver(mailet, dns_server, until=lambda: "deferred carol@" in caplog.text)
        assert "4.7.4 mx.notls.params.test[127.0.0.2]" in caplog.text
        assert "does not offer STARTTLS" in caplog.text
        assert dest.messages == []
    finally:
        dest.stop()


def test_on_success_processor(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination().start()
    try:
        _mx(dns_server, "success.params.test", "mx.success.params.test")
        mailet = mailet_with(
            Context(tmp_path),
            onSuccess="delivered",
            sendpartial="true",
            **{"mail.smtp.port": str(dest.port)},
        )
        mail = make_mail("OK1", ["carol@success.params.test", "bad@success.params.test"])
        mailet.service(mail)
        enqueued = deliver(mailet, dns_server)
        states = sorted((e[3], e[2], e[1]) for e in enqueued)
        # the DSN for bad@ (no bounce processor: built here, to the sender, from <>)
        # and the delivered recipient into onSuccess
        assert states == [
            ("", [ALICE], ""),
            ("delivered", ["carol@success.params.test"], ALICE),
        ]
        (success,) = [e for e in enqueued if e[3] == "delivered"]
        assert success[0] == mail.message.as_bytes()
    finally:
        dest.stop()


def test_use_priority(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination().start()
    try:
        _mx(dns_server, "prio.params.test", "mx.prio.params.test")
        mailet = mailet_with(
            Context(tmp_path),
            usePriority="true",
            deliveryThreads="1",
            **{"mail.smtp.port": str(dest.port)},
        )
        for name, prio in (("P1", 1), ("P2", 9), ("P3", 5)):
            mail = make_mail(name, [f"{name.lower()}@prio.params.test"])
            mail.attributes["MAIL_PRIORITY"] = prio
            mailet.service(mail)
        deliver(mailet, dns_server)
        assert [m.rcpts[0].partition("@")[0] for m in dest.messages] == ["p2", "p3", "p1"]
    finally:
        dest.stop()


def test_container_refuses_what_remote_delivery_cannot_honour(tmp_path: Path) -> None:
    """In mailetcontainer.xml: the start stops with the element and the reason."""
    with pytest.raises(ConfigError) as err:
        Harness(
            tmp_path,
            processors("""<processor state="root">
              <mailet match="All" class="RemoteDelivery">
                <bounceProcessor>nowhere</bounceProcessor>
                <onSuccess>elsewhere</onSuccess>
              </mailet></processor>
              <processor state="relay">
              <mailet match="All" class="RemoteDelivery">
                <mail.smtp.starttls.required>true</mail.smtp.starttls.required>
              </mailet></processor>"""),
        )
    text = str(err.value)
    assert "no processor 'nowhere'" in text and "no processor 'elsewhere'" in text
    assert "<mail.smtp.starttls.required> is not a RemoteDelivery parameter" in text


def test_gateway_that_is_myself_bounces(tmp_path: Path, dns_server: TestDns) -> None:
    mailet = mailet_with(Context(tmp_path), gateway="127.0.0.1:2525")
    mailet.service(make_mail("G1", ["carol@far.params.test"]))
    enqueued = deliver(mailet, dns_server, myself=SelfCheck([("127.0.0.1", 2525)]))
    ((dsn, _, rcpts, _, _),) = enqueued
    assert rcpts == [ALICE]
    assert b"Status: 5.4.6" in dsn and b"the gateway loops back to myself" in dsn
