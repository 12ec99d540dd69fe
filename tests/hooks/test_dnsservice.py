"""The DNS service handlers use, against the loopback DNS server, and dnsservice.xml."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kittiwake.config import ConfigError, load_config
from kittiwake.config.model import Bind, DnsConfig
from kittiwake.dnsservice import DnsService, DnsTempError, reverse_ip
from kw_dns import TestDns


def service(dns: TestDns, timeout: float = 1.0) -> DnsService:
    return DnsService(
        DnsConfig(servers=(Bind("127.0.0.1", dns.port),), autodiscover=False, timeout=timeout)
    )


async def test_lookups(dns_server: TestDns) -> None:
    dns_server.add("svc.dns.test", "A", "192.0.2.1", "192.0.2.2")
    dns_server.add("svc.dns.test", "AAAA", "2001:db8::1")
    dns_server.add("svc.dns.test", "MX", "20 b.dns.test", "10 a.dns.test")
    dns_server.add("svc.dns.test", "TXT", "v=spf1 " + "x" * 300)
    dns_server.add("9.2.0.192.in-addr.arpa", "PTR", "nine.dns.test")
    s = service(dns_server)
    assert sorted(await s.a("svc.dns.test")) == ["192.0.2.1", "192.0.2.2"]
    assert await s.aaaa("SVC.dns.test.") == ["2001:db8::1"]
    assert sorted(await s.addresses("svc.dns.test")) == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert await s.mx("svc.dns.test") == [(10, "a.dns.test"), (20, "b.dns.test")]
    assert await s.txt("svc.dns.test") == ["v=spf1 " + "x" * 300]  # strings joined
    assert await s.ptr("192.0.2.9") == ["nine.dns.test"]
    # no such name, no such data, a name that cannot exist: no records
    assert await s.a("nothing.dns.test") == []
    assert await s.txt("9.2.0.192.in-addr.arpa") == []
    assert await s.a("x" * 70 + ".dns.test") == []


async def test_no_answer_is_a_temporary_error(dns_server: TestDns) -> None:
    dns_server.fail("servfail.dns.test")
    dns_server.drop("silent.dns.test")
    s = service(dns_server, timeout=1.0)
    with pytest.raises(DnsTempError):
        await s.a("servfail.dns.test")
    started = time.monotonic()
    with pytest.raises(DnsTempError):
        await s.addresses("silent.dns.test")
    assert time.monotonic() - started < 3


def test_reverse_ip() -> None:
    assert reverse_ip("192.0.2.1") == "1.2.0.192"
    assert reverse_ip("2001:db8::1").startswith("1.0.0.0.") and reverse_ip("2001:db8::1").endswith(
        ".8.b.d.0.1.0.0.2"
    )
    with pytest.raises(ValueError):
        reverse_ip("not-an-ip")


def test_dnsservice_xml(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dnsservice.xml").write_text(
        "<dnsservice><servers><server>192.0.2.53</server><server>127.0.0.1:5353</server>"
        "<server>[::1]:5300</server></servers><autodiscover>false</autodiscover>"
        "<authoritative>false</authoritative><maxcachesize>100</maxcachesize>"
        "<timeout>3</timeout></dnsservice>"
    )
    config = load_config(conf)
    assert config.dns == DnsConfig(
        servers=(Bind("192.0.2.53", 53), Bind("127.0.0.1", 5353), Bind("::1", 5300)),
        autodiscover=False,
        timeout=3.0,
        max_cache_size=100,
    )
    assert "dnsservice.xml: <dnsservice>/<authoritative>" in config.unimplemented
    s = DnsService(config.dns)
    assert s.servers == ["192.0.2.53:53", "127.0.0.1:5353", "::1:5300"]


def test_no_servers_and_no_autodiscovery_is_localhost() -> None:
    s = DnsService(DnsConfig(autodiscover=False))
    assert s.servers == ["127.0.0.1:53"]


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("dns.example.com", "is not an IP address"),
        ("127.0.0.1:0", "out of range"),
        ("[::1", "is not [IPv6]"),
    ],
)
def test_bad_servers(tmp_path: Path, server: str, reason: str) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dnsservice.xml").write_text(
        f"<dnsservice><servers><server>{server}</server></servers></dnsservice>"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(conf)
    (problem,) = exc.value.problems
    assert problem.file == "dnsservice.xml"
    assert problem.element == "<dnsservice>/<servers>/<server>"
    assert reason in problem.reason
