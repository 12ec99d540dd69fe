"""RemoteDelivery's ESMTP parameters (issue 8): SIZE (RFC 1870), SMTPUTF8 (RFC 6531)
and BODY=8BITMIME (RFC 6152), as an aiosmtpd destination offers them or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from kittiwake.mailet.remote import RemoteDelivery
from kw_dns import TestDns

from .remote_helpers import ALICE, Context, Destination, deliver, mailet_with, make_mail


def _mx(dns: TestDns, domain: str) -> None:
    dns.add(domain, "MX", f"10 mx.{domain}")
    dns.add(f"mx.{domain}", "A", "127.0.0.2")


def _mailet(tmp_path: Path, dest: Destination) -> RemoteDelivery:
    return mailet_with(Context(tmp_path), sendpartial="true", **{"mail.smtp.port": str(dest.port)})


def test_size_sent_and_over_the_limit_fails_at_once(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination().start(data_size_limit=2000)
    try:
        _mx(dns_server, "size.nego.test")
        mailet = _mailet(tmp_path, dest)
        small = make_mail("Z1", ["carol@size.nego.test"])
        big = make_mail("Z2", ["dave@size.nego.test"], body=(b"x" * 70 + b"\r\n") * 40)
        mailet.service(small)
        mailet.service(big)
        enqueued = deliver(mailet, dns_server)
        assert [(m.rcpts, m.options) for m in dest.messages] == [
            (["carol@size.nego.test"], [f"SIZE={small.size}"])
        ]
        ((dsn, sender, rcpts, _, _),) = enqueued  # never sent, and not retried
        assert sender == "" and rcpts == [ALICE]
        assert b"Final-Recipient: rfc822; dave@size.nego.test" in dsn
        assert b"Status: 5.3.4" in dsn
        assert f"message size {big.size} exceeds the limit 2000".encode() in dsn
    finally:
        dest.stop()


def test_no_size_parameter_when_not_offered(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination(hide=frozenset({"SIZE"})).start(data_size_limit=0)
    try:
        _mx(dns_server, "nosize.nego.test")
        mailet = _mailet(tmp_path, dest)
        mailet.service(make_mail("Z3", ["carol@nosize.nego.test"]))
        assert deliver(mailet, dns_server) == []
        assert [m.options for m in dest.messages] == [[]]
    finally:
        dest.stop()


def test_smtputf8_when_offered(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination(hide=frozenset({"SIZE"})).start(enable_SMTPUTF8=True)
    try:
        _mx(dns_server, "utf8.nego.test")
        mailet = _mailet(tmp_path, dest)
        mailet.service(make_mail("U1", ["josé@utf8.nego.test"]))
        assert deliver(mailet, dns_server) == []
        assert [(m.rcpts, m.options) for m in dest.messages] == [
            (["josé@utf8.nego.test"], ["SMTPUTF8"])
        ]
    finally:
        dest.stop()


def test_non_ascii_address_without_smtputf8_fails_with_5_6_7(
    tmp_path: Path, dns_server: TestDns
) -> None:
    dest = Destination(hide=frozenset({"SIZE"})).start(enable_SMTPUTF8=False)
    try:
        _mx(dns_server, "ascii.nego.test")
        mailet = _mailet(tmp_path, dest)
        mailet.service(make_mail("U2", ["josé@ascii.nego.test", "carol@ascii.nego.test"]))
        enqueued = deliver(mailet, dns_server)
        # RFC 6531 3.4: the whole transaction needs SMTPUTF8, so neither goes
        assert dest.messages == []
        ((dsn, _, rcpts, _, _),) = enqueued
        assert rcpts == [ALICE]
        assert b"Status: 5.6.7" in dsn and b"does not support SMTPUTF8" in dsn
        assert "josé@ascii.nego.test".encode() in dsn
    finally:
        dest.stop()


def test_8bitmime_for_8bit_content_only(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination(hide=frozenset({"SIZE"})).start()
    hidden = Destination(host="127.0.0.3", hide=frozenset({"SIZE", "8BITMIME"})).start()
    try:
        _mx(dns_server, "8bit.nego.test")
        dns_server.add("old.nego.test", "MX", "10 mx.old.nego.test")
        dns_server.add("mx.old.nego.test", "A", "127.0.0.3")
        mailet = mailet_with(
            Context(tmp_path),
            deliveryThreads="1",
            **{"mail.smtp.port": str(dest.port)},
        )
        body = "Grüße aus Köln\r\n".encode()
        mailet.service(make_mail("E1", ["carol@8bit.nego.test"], body=body))
        mailet.service(make_mail("E2", ["dave@8bit.nego.test"]))
        deliver(mailet, dns_server)
        options = {m.rcpts[0]: m.options for m in dest.messages}
        assert options == {"carol@8bit.nego.test": ["BODY=8BITMIME"], "dave@8bit.nego.test": []}
        assert body in dest.messages[0].data

        old = mailet_with(Context(tmp_path / "2"), **{"mail.smtp.port": str(hidden.port)})
        old.service(make_mail("E3", ["erin@old.nego.test"], body=body))
        deliver(old, dns_server)
        # sent as it is (no 7-bit conversion), without a BODY the server does not know
        assert [(m.options, body in m.data) for m in hidden.messages] == [([], True)]
    finally:
        dest.stop()
        hidden.stop()


def test_envelope_paths_on_the_command_line() -> None:
    """RFC 5321 4.1.2: a mailbox is bracketed as it is (UTF-8 with SMTPUTF8), a quoted
    local part too; anything that could add a parameter or a command to the line is
    refused, never trimmed into another address."""
    from kittiwake.mailet.remote_smtp import _path

    assert _path("") == b"<>"
    assert _path("user+tag@x.example") == b"<user+tag@x.example>"
    assert _path("u@[192.0.2.1]") == b"<u@[192.0.2.1]>"
    assert _path("jöran@bücher.test") == "<jöran@bücher.test>".encode()
    assert _path('"a b"@x.test') == b'<"a b"@x.test>'
    assert _path('"a\\"b"@x.test') == b'<"a\\"b"@x.test>'
    for bad in (
        "a b@x.test",
        "a@x.test\r\nRSET",
        "a@x.test> SIZE=1",
        "<a@x.test>",
        '"a\r\nb"@x.test',
        "a@x.test b",
    ):
        with pytest.raises(ValueError):
            _path(bad)


def test_an_address_unfit_for_the_command_line_fails_at_once(
    tmp_path: Path, dns_server: TestDns
) -> None:
    """A recipient a mailet made that cannot go on a command line as it is (here with a
    space and a CRLF) fails at once with 5.1.3 and a DSN; the others are delivered."""
    dest = Destination().start()
    try:
        _mx(dns_server, "path.nego.test")
        mailet = _mailet(tmp_path, dest)
        bad = "eve\r\nRSET\r\nMAIL FROM:<x>@path.nego.test"
        mailet.service(make_mail("P1", ["carol@path.nego.test", bad]))
        enqueued = deliver(mailet, dns_server)
        assert [m.rcpts for m in dest.messages] == [["carol@path.nego.test"]]
        ((dsn, sender, rcpts, _, _),) = enqueued
        assert sender == "" and rcpts == [ALICE]
        assert b"Status: 5.1.3" in dsn and b"bad destination mailbox address syntax" in dsn
    finally:
        dest.stop()
