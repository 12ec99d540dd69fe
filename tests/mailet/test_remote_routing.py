"""RemoteDelivery's parts that need no SMTP server: James's delayTime syntax and the
RFC 5321 section 5 routing against the loopback DNS server."""

from __future__ import annotations

import asyncio

import pytest

from kittiwake.config.model import Bind, DnsConfig
from kittiwake.dnsservice import DnsService
from kittiwake.mailet.api import MailetError
from kittiwake.mailet.remote import Route, parse_delay_time, resolve_route
from kw_dns import TestDns


def service(dns: TestDns) -> DnsService:
    return DnsService(
        DnsConfig(servers=(Bind("127.0.0.1", dns.port),), autodiscover=False, timeout=1.0)
    )


def route_of(s: DnsService, domain: str, port: int = 25) -> Route:
    return asyncio.run(resolve_route(s, domain, port))


def test_delay_time_james_syntax() -> None:
    assert parse_delay_time("5000, 100000, 500000") == [5.0, 100.0, 500.0]
    assert parse_delay_time("4*15 minute, 2*1 hour") == [900.0] * 4 + [3600.0] * 2
    assert parse_delay_time("2 * 3 sec,1 day, 10 ms") == [3.0, 3.0, 86400.0, 0.01]
    assert parse_delay_time("1*6 hour") == [21600.0]
    for bad in ("", "fast", "5 fortnights", "*5"):
        with pytest.raises(MailetError):
            parse_delay_time(bad)


def test_mx_by_preference_random_among_equals(dns_server: TestDns) -> None:
    dns_server.add("pref.route.test", "MX", "20 c.pref.route.test", "10 a.pref.route.test")
    dns_server.add("pref.route.test", "MX", "10 b.pref.route.test")
    for name, ip in (("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")):
        dns_server.add(f"{name}.pref.route.test", "A", ip)
    dns_server.add("pref.route.test", "A", "192.0.2.99")  # never used: there are MXs
    s = service(dns_server)
    firsts = set()
    for _ in range(30):
        route = route_of(s, "pref.route.test")
        assert not route.failure
        addresses = [h[1] for h in route.hosts]
        assert sorted(addresses[:2]) == ["192.0.2.1", "192.0.2.2"]
        assert addresses[2] == "192.0.2.3"
        assert all(h[2] == 25 for h in route.hosts)
        firsts.add(addresses[0])
    assert firsts == {"192.0.2.1", "192.0.2.2"}


def test_implicit_mx_only_without_any_mx(dns_server: TestDns) -> None:
    dns_server.add("amx.route.test", "A", "192.0.2.10")
    dns_server.add("amx.route.test", "AAAA", "2001:db8::10")
    route = route_of(service(dns_server), "amx.route.test", 2525)
    assert {h[1] for h in route.hosts} == {"192.0.2.10", "2001:db8::10"}
    assert all(h[0] == "amx.route.test" and h[2] == 2525 for h in route.hosts)


def test_temporary_dns_failure_defers_never_falls_back(dns_server: TestDns) -> None:
    dns_server.add("tmp.route.test", "A", "192.0.2.20")
    dns_server.fail("tmp.route.test")
    route = route_of(service(dns_server), "tmp.route.test")
    assert route.failure == "temporary" and not route.hosts
    assert route.reason.startswith("4.4.3")


def test_null_mx_fails_at_once(dns_server: TestDns) -> None:
    dns_server.add("nullmx.route.test", "MX", "0 .")
    dns_server.add("nullmx.route.test", "A", "192.0.2.30")
    route = route_of(service(dns_server), "nullmx.route.test")
    assert route.failure == "permanent" and route.reason.startswith("5.1.10")


def test_no_such_domain_and_mx_without_address(dns_server: TestDns) -> None:
    s = service(dns_server)
    route = route_of(s, "nothing-here.route.test")
    assert route.failure == "permanent" and route.reason.startswith("5.1.2")
    dns_server.add("dangling.route.test", "MX", "10 gone.route.test")
    route = route_of(s, "dangling.route.test")
    assert route.failure == "permanent" and route.reason.startswith("5.4.4")


def test_ip_literals(dns_server: TestDns) -> None:
    s = service(dns_server)
    assert (route_of(s, "[192.0.2.40]")).hosts == (("192.0.2.40", "192.0.2.40", 25),)
    assert (route_of(s, "[IPv6:2001:db8::40]")).hosts[0][1] == "2001:db8::40"
    assert (route_of(s, "[not-an-ip]")).failure == "permanent"
