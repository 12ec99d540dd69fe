"""RemoteDelivery's parts that need no SMTP server: James's delayTime syntax and the
RFC 5321 section 5 routing against the loopback DNS server."""

from __future__ import annotations

import asyncio

import pytest

from kittiwake.config.model import Bind, DnsConfig
from kittiwake.dnsservice import DnsService
from kittiwake.mailet.api import MailetError
from kittiwake.mailet.remote import Route, SelfCheck, parse_delay_time, resolve_route
from kw_dns import TestDns


def service(dns: TestDns) -> DnsService:
    return DnsService(
        DnsConfig(servers=(Bind("127.0.0.1", dns.port),), autodiscover=False, timeout=1.0)
    )


def route_of(s: DnsService, domain: str, port: int = 25, myself: SelfCheck | None = None) -> Route:
    return asyncio.run(resolve_route(s, domain, port, myself))


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


#: kittiwake listening on 127.0.0.1:2525 and on every address at port 2526
MYSELF = SelfCheck([("127.0.0.1", 2525), ("0.0.0.0", 2526)], ["mx.kittiwake.test"])


def test_mx_naming_myself_is_a_configuration_error(dns_server: TestDns) -> None:
    dns_server.add("byname.self.test", "MX", "10 MX.Kittiwake.test.")
    dns_server.add("mx.kittiwake.test", "A", "192.0.2.50")
    route = route_of(service(dns_server), "byname.self.test", 25, MYSELF)
    assert route.failure == "permanent" and not route.hosts
    assert route.reason == "5.4.6 mail for byname.self.test loops back to myself"


def test_mx_addresses_of_myself(dns_server: TestDns) -> None:
    s = service(dns_server)
    dns_server.add("byaddr.self.test", "MX", "10 me.self.test")
    dns_server.add("me.self.test", "A", "127.0.0.1")
    route = route_of(s, "byaddr.self.test", 2525, MYSELF)
    assert route.reason == "5.4.6 mail for byaddr.self.test loops back to myself"
    # another port of the same address is another server (tests run peers so)
    assert route_of(s, "byaddr.self.test", 25, MYSELF).hosts == (("me.self.test", "127.0.0.1", 25),)
    # a wildcard bind: every address of this machine on that port is myself...
    dns_server.add("wild.self.test", "A", "127.0.0.9")
    assert route_of(s, "wild.self.test", 2526, MYSELF).failure == "permanent"
    # ...but not an address of another machine
    dns_server.add("far.self.test", "A", "192.0.2.60")
    assert route_of(s, "far.self.test", 2526, MYSELF).hosts[0][1] == "192.0.2.60"
    assert route_of(s, "[127.0.0.1]", 2525, MYSELF).reason.startswith("5.4.6")


def test_backup_mx_drops_itself_and_worse_preferences(dns_server: TestDns) -> None:
    """RFC 5321 5.1: as a backup MX, deliver only to the more preferred hosts."""
    s = service(dns_server)
    dns_server.add("backup.self.test", "MX", "10 primary.self.test", "20 mx.kittiwake.test")
    dns_server.add("backup.self.test", "MX", "30 tertiary.self.test")
    dns_server.add("primary.self.test", "A", "192.0.2.70")
    dns_server.add("tertiary.self.test", "A", "192.0.2.71")
    route = route_of(s, "backup.self.test", 25, MYSELF)
    assert route.hosts == (("primary.self.test", "192.0.2.70", 25),)
    # the best MX is myself: every other has equal or larger preference, none is left
    dns_server.add("primary.self.test", "A", "127.0.0.1")
    dns_server.add("best.self.test", "MX", "5 me2.self.test", "10 tertiary.self.test")
    dns_server.add("me2.self.test", "A", "127.0.0.1")
    route = route_of(s, "best.self.test", 2525, MYSELF)
    assert route.reason == "5.4.6 mail for best.self.test loops back to myself"
    # without knowing itself (no listeners given) nothing is dropped
    assert len(route_of(s, "best.self.test", 2525).hosts) == 2


def test_open_connection_first_only_among_equal_preferences(dns_server: TestDns) -> None:
    dns_server.add("reuse.route.test", "MX", "10 a.reuse.route.test", "10 b.reuse.route.test")
    dns_server.add("reuse.route.test", "MX", "20 c.reuse.route.test")
    for name, ip in (("a", "192.0.2.81"), ("b", "192.0.2.82"), ("c", "192.0.2.83")):
        dns_server.add(f"{name}.reuse.route.test", "A", ip)
    s = service(dns_server)
    for _ in range(10):
        route = route_of(s, "reuse.route.test")
        assert route.preferences == (10, 10, 20)
        # an open connection to b: b first (a is its equal)
        assert [h[1] for h in route.ordered({("192.0.2.82", 25)})][:1] == ["192.0.2.82"]
        # one to the backup c: c stays after the better ones
        assert [h[1] for h in route.ordered({("192.0.2.83", 25)})][2] == "192.0.2.83"
