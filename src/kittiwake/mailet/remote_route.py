"""RemoteDelivery's routing: where a domain's mail goes (RFC 5321 section 5), what
counts as kittiwake itself, and James's ``delayTime`` syntax.

"Myself" (RFC 5321 5.1: an SMTP client that finds itself in the MX list must discard
that entry and every entry of equal or larger preference):

* an MX (or gateway) whose name is one of kittiwake's own names (the listeners'
  ``helloName`` and RemoteDelivery's ``heloName``), compared without case; or
* an address and port one of kittiwake's listening sockets accepts: the same IP and port
  as a ``<bind>``, or any address of this machine on a bound port when the bind is a
  wildcard (``0.0.0.0``, ``::``). The port counts: 127.0.0.2:25 is another server when
  kittiwake listens on 127.0.0.1:25 only (tests run their peers that way).

When that leaves no host the mail fails at once with ``5.4.6 mail for DOMAIN loops back
to myself`` (Postfix's text and status): it is a configuration error (an MX record that
names this server for a domain it does not accept), not something a retry mends.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import random
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from kittiwake.dnsservice import DnsService, DnsTempError
from kittiwake.mailet.api import MailetError

__all__ = [
    "Route",
    "SelfCheck",
    "ip_literal",
    "loops_back",
    "parse_delay_time",
    "resolve_route",
]

_UNITS = {
    "": 1,
    "ms": 1,
    "msec": 1,
    "msecs": 1,
    "s": 1000,
    "sec": 1000,
    "secs": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "mins": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_DELAY = re.compile(r"^\s*(?:(\d+)\s*\*)?\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_delay_time(text: str) -> list[float]:
    """James's ``delayTime``: ``"5000, 100000"`` or ``"4*15 minute, 2*1 hour"`` -> the
    delays in seconds, one per retry.

    Raises:
        MailetError: a part that is not ``[attempts*]delay [unit]``.
    """
    out: list[float] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _DELAY.match(part)
        unit = m.group(3).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise MailetError(f"<delayTime>: {part.strip()!r} is not [attempts*]delay [unit]")
        attempts = int(m.group(1)) if m.group(1) else 1
        out.extend([int(m.group(2)) * _UNITS[unit] / 1000.0] * attempts)
    if not out:
        raise MailetError("<delayTime> is empty")
    return out


@dataclass(frozen=True, slots=True)
class Route:
    """Where a domain's mail goes: hosts in order, or why not."""

    #: (name for logs and TLS, address, port) to try in order
    hosts: tuple[tuple[str, str, int], ...] = ()
    #: no route: "temporary" (try again later) or "permanent" (bounce)
    failure: str = ""
    reason: str = ""
    #: each host's MX preference (same order as hosts; empty: all equal)
    preferences: tuple[int, ...] = ()

    def ordered(self, first: set[tuple[str, int]]) -> list[tuple[str, str, int]]:
        """The hosts, those whose (address, port) is in ``first`` (a connection is
        open to them) first among hosts of equal preference: RFC 5321 5.1 leaves the
        order among equals to the client."""
        prefs = self.preferences or (0,) * len(self.hosts)
        order = sorted(
            range(len(self.hosts)),
            key=lambda i: (prefs[i], (self.hosts[i][1], self.hosts[i][2]) not in first),
        )
        return [self.hosts[i] for i in order]


class SelfCheck:
    """Kittiwake's own names and listening sockets (see the module docstring)."""

    def __init__(self, binds: Iterable[tuple[str, int]] = (), names: Iterable[str] = ()) -> None:
        self.binds = [(_ip(host), port) for host, port in binds if _ip(host) is not None]
        self.names = {n.lower().rstrip(".") for n in names if n}
        self._local: dict[str, bool] = {}

    def name(self, name: str) -> bool:
        return name.lower().rstrip(".") in self.names

    def address(self, address: str, port: int) -> bool:
        ip = _ip(address)
        if ip is None:
            return False
        for host, bound in self.binds:
            if bound != port or host is None:
                continue
            if host == ip:
                return True
            # kittiwake binds "::" IPv6-only (server/sockets.py): same family only
            if host.is_unspecified and host.version == ip.version and self._is_local(ip):
                return True
        return False

    def _is_local(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """An address of this machine: one a socket can bind to (all of 127/8 on Linux)."""
        text = str(ip)
        if text not in self._local:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            ok = False
            with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((text, 0))
                ok = True
            self._local[text] = ok
        return self._local[text]


# Both are pure and asked again for every relayed mail (the gateway, each MX address):
# parsing an address with ipaddress is a few µs, a cache hit a dictionary lookup.
@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def ip_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` -> the address; None if not a literal."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def loops_back(domain: str) -> Route:
    return Route(failure="permanent", reason=f"5.4.6 mail for {domain} loops back to myself")


async def resolve_route(
    dns: DnsService, domain: str, port: int = 25, myself: SelfCheck | None = None
) -> Route:
    """The hosts for ``domain`` per RFC 5321 section 5, without kittiwake itself."""
    myself = myself or SelfCheck()
    literal = ip_literal(domain)
    if literal is not None:
        if myself.address(literal, port):
            return loops_back(domain)
        return Route(((literal, literal, port),))
    if domain.startswith("["):
        return Route(failure="permanent", reason=f"5.1.2 bad address literal {domain}")
    try:
        mxs = await dns.mx(domain)
    except DnsTempError as exc:
        return Route(failure="temporary", reason=f"4.4.3 DNS lookup failed: {exc}")
    if any(name in ("", ".", "@") for _, name in mxs):
        return Route(failure="permanent", reason=f"5.1.10 {domain} accepts no mail (null MX)")
    names: list[tuple[int, str]] = []
    if mxs:
        by_pref: dict[int, list[str]] = {}
        for pref, name in mxs:
            by_pref.setdefault(pref, []).append(name)
        for pref in sorted(by_pref):
            group = by_pref[pref]
            random.shuffle(group)
            names.extend((pref, name) for name in group)
    else:
        names = [(0, domain)]  # the implicit MX (RFC 5321 5.1)
    found: list[tuple[int, str, str]] = []
    temp: list[int] = []  # preferences of the names whose addresses are unknown now
    mine: list[int] = []  # preferences at which kittiwake itself was found
    for pref, name in names:
        if myself.name(name):
            mine.append(pref)
            continue
        try:
            addresses = await dns.addresses(name)
        except DnsTempError:
            temp.append(pref)
            continue
        for addr in addresses:
            if myself.address(addr, port):
                mine.append(pref)
            else:
                found.append((pref, name, addr))
    limit = min(mine) if mine else None
    # RFC 5321 5.1: discard ourselves and every host of equal or larger preference
    kept = [(p, n, a) for p, n, a in found if limit is None or p < limit]
    if kept:
        return Route(
            tuple((n, a, port) for _, n, a in kept), preferences=tuple(p for p, _, _ in kept)
        )
    if any(limit is None or p < limit for p in temp):
        return Route(failure="temporary", reason=f"4.4.3 no address for the hosts of {domain}")
    if mine:
        return loops_back(domain)
    if mxs:
        return Route(failure="permanent", reason=f"5.4.4 the MX hosts of {domain} have no address")
    return Route(failure="permanent", reason=f"5.1.2 no mail host for {domain}")
