"""DNS lookups for the handlers (RBL, SPF, HELO and sender checks): James's DNSService.

One :class:`DnsService` per process, built from ``dnsservice.xml``
(:class:`~kittiwake.config.model.DnsConfig`). Lookups are asynchronous (dnspython's
asyncio resolver), so a slow name server holds up only the session that asked. Answers
are cached (``maxcachesize``, TTLs honoured).

A lookup has three outcomes: records; no records (NXDOMAIN, no data, a name that
cannot exist): an empty list; or no answer at all (timeout, SERVFAIL from every
server): :class:`DnsTempError`, which handlers turn into a temporary refusal or a
"not listed", as James does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from kittiwake.config.model import DnsConfig

__all__ = ["DnsService", "DnsTempError", "reverse_ip"]

log = logging.getLogger("kittiwake.dns")

#: seconds one server is given before the next is tried (the lookup's total is
#: ``DnsConfig.timeout``)
_PER_SERVER_TIMEOUT = 2.0


class DnsTempError(Exception):
    """No answer (timeout, SERVFAIL): the question could not be decided now."""


def reverse_ip(ip: str) -> str:
    """The DNSBL form of an address, without the zone: ``192.0.2.1`` -> ``1.2.0.192``;
    IPv6 as 32 reversed nibbles (RFC 5782 2.4).

    Raises:
        ValueError: not an IP address.
    """
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ".".join(reversed(ip.split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


def _nameservers(config: DnsConfig, discovered: Sequence[Any]) -> list[dns.nameserver.Nameserver]:
    servers: list[dns.nameserver.Nameserver] = [
        dns.nameserver.Do53Nameserver(bind.host, bind.port) for bind in config.servers
    ]
    if config.autodiscover:
        for ns in discovered:
            if isinstance(ns, dns.nameserver.Nameserver):
                servers.append(ns)
            else:
                servers.append(dns.nameserver.Do53Nameserver(str(ns), 53))
    if not servers:  # James: no server and no autodiscovery means 127.0.0.1
        servers.append(dns.nameserver.Do53Nameserver("127.0.0.1", 53))
    return servers


def _configure(resolver: dns.resolver.BaseResolver, config: DnsConfig) -> None:
    discovered: list[Any] = []
    if config.autodiscover:
        try:
            resolver.read_resolv_conf("/etc/resolv.conf")
            discovered = list(resolver.nameservers)
        except (dns.resolver.NoResolverConfiguration, OSError):
            log.warning("dnsservice: autodiscover found no resolver in /etc/resolv.conf")
    resolver.nameservers = _nameservers(config, discovered)
    resolver.lifetime = config.timeout
    resolver.timeout = min(_PER_SERVER_TIMEOUT, config.timeout)
    resolver.search = []
    resolver.use_search_by_default = False
    if config.max_cache_size:
        resolver.cache = dns.resolver.LRUCache(config.max_cache_size)


class DnsService:
    """Asynchronous lookups through the configured resolvers.

    Args:
        config: from ``dnsservice.xml``; the default asks the system's resolvers.
    """

    def __init__(self, config: DnsConfig | None = None) -> None:
        self.config = config if config is not None else DnsConfig()
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        _configure(self._resolver, self.config)
        #: the same servers for code that must look up synchronously (pyspf, in a thread)
        self.sync_resolver = dns.resolver.Resolver(configure=False)
        _configure(self.sync_resolver, self.config)

    @property
    def servers(self) -> list[str]:
        return [f"{ns.address}:{ns.port}" for ns in self._resolver.nameservers]  # type: ignore[union-attr]

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
            return []  # a name that cannot exist has no records
        except dns.resolver.YXDOMAIN:
            return []
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{rdtype} {name}: timeout") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"{rdtype} {name}: no server answered") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc}") from exc
        return list(answer)

    async def a(self, name: str) -> list[str]:
        """IPv4 addresses of ``name``."""
        return [r.address for r in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses of ``name``."""
        return [r.address for r in await self._query(name, "AAAA")]

    async def addresses(self, name: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``name`` (both asked at once).

        Raises:
            DnsTempError: neither question got an answer.
        """
        results = await asyncio.gather(self.a(name), self.aaaa(name), return_exceptions=True)
        found: list[str] = []
        errors = 0
        for result in results:
            if isinstance(result, DnsTempError):
                errors += 1
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(result)
        if not found and errors:
            raise DnsTempError(f"addresses of {name}: no answer")
        return found

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """``(preference, exchange)`` pairs, exchange without the final dot."""
        records = await self._query(name, "MX")
        return sorted((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records)

    async def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined (RFC 7208 3.3), undecodable bytes replaced."""
        records = await self._query(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]

    async def ptr(self, ip: str) -> list[str]:
        """Names of ``ip`` (reverse DNS), without the final dot.

        Raises:
            ValueError: not an IP address.
        """
        name = dns.reversename.from_address(ip)
        records = await self._query(name.to_text(), "PTR")
        return [r.target.to_text(omit_final_dot=True) for r in records]
