"""Trusted networks: James's ``authorizedAddresses`` syntax, and matching a client.

James (``NetMatcher`` / ``InetNetworkBuilder``) accepts, comma- or space-separated:

==========================  ======================================================
``127.0.0.1``               one IPv4 address
``127.*`` ``127.0.*``       a wildcard after whole octets (``*`` alone: everything)
``127.0.0.0/8``             CIDR
``127.0.0.0/255.0.0.0``     address and netmask
``localhost``               a host name: every address it resolves to
``localhost/8``             a host name and a prefix (or ``/255.0.0.0``)
``::1`` ``2001:db8::/32``   IPv6, with ``/n`` or James's ``%n``
==========================  ======================================================

Where kittiwake is stricter than James: a network that holds every address (``*``,
``0.0.0.0/0``, ``::/0``) is refused, because it would make the server an open relay;
a non-contiguous netmask is refused rather than matched bit by bit; for a host name
with a mask, the mask applies to its IPv4 addresses and its IPv6 addresses are trusted
alone (``localhost/8`` must not become ``::/8``).

Parsing takes the resolver as an argument (the config loader passes the system's);
matching is pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import lru_cache

__all__ = [
    "InvalidNetwork",
    "Network",
    "client_is_trusted",
    "parse_network",
    "parse_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str], tuple[str, ...]]

_SEPARATORS = re.compile(r"[,\s]+")
_DOTTED = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_WILDCARD = re.compile(r"(?:[0-9]{1,3}\.){0,3}\*")
_DIGITS = re.compile(r"[0-9]{1,3}")


class InvalidNetwork(ValueError):
    """An ``authorizedAddresses`` entry that cannot be read (the message says why)."""


def parse_networks(text: str, resolve: Resolve) -> tuple[Network, ...]:
    """Every network of an ``authorizedAddresses`` value, in order, without repeats.

    Args:
        text: the element's text: entries separated by commas and/or white space.
        resolve: host name -> IP literals; raises ``OSError`` when it cannot.

    Raises:
        InvalidNetwork: an entry does not parse, does not resolve, or holds every address.
    """
    out: list[Network] = []
    for spec in _SEPARATORS.split(text.strip()):
        if not spec:
            continue
        for net in parse_network(spec, resolve):
            if net not in out:
                out.append(net)
    return tuple(out)


def parse_network(spec: str, resolve: Resolve) -> tuple[Network, ...]:
    """The networks one entry stands for (a host name may give several).

    Raises:
        InvalidNetwork: see :func:`parse_networks`.
    """
    nets = _ipv6(spec) if ":" in spec else _ipv4(spec, resolve)
    for net in nets:
        if net.prefixlen == 0:
            raise InvalidNetwork(f"{spec!r} trusts every address: that is an open relay")
    return nets


def _ipv6(spec: str) -> tuple[Network, ...]:
    if spec.endswith("*"):
        raise InvalidNetwork(f"{spec!r}: no wildcard for IPv6 (James has none either)")
    address, sep, prefix = spec.replace("%", "/").partition("/")
    if sep and not prefix.isdigit():
        raise InvalidNetwork(f"{spec!r}: the prefix length must be a number")
    try:
        ip = ipaddress.IPv6Address(address)
        bits = int(prefix) if sep else 128
        if ip.ipv4_mapped is not None:
            # ::ffff:10.0.0.0/104 is the IPv4 network 10.0.0.0/8: match it as one.
            return (ipaddress.IPv4Network((ip.ipv4_mapped, max(bits - 96, 0)), strict=False),)
        return (ipaddress.IPv6Network((ip, bits), strict=False),)
    except ValueError as exc:
        raise InvalidNetwork(f"{spec!r}: {exc}") from None


def _ipv4(spec: str, resolve: Resolve) -> tuple[Network, ...]:
    if spec.endswith("*"):
        if not _WILDCARD.fullmatch(spec):
            raise InvalidNetwork(f"{spec!r}: a wildcard must follow whole octets (127.0.*)")
        octets = spec[:-1].split(".")[:-1]
        return (
            _v4_network(".".join([*octets, *["0"] * (4 - len(octets))]), 8 * len(octets), spec),
        )
    host, sep, mask = spec.partition("/")
    bits = 32
    if sep:
        if _DIGITS.fullmatch(mask):
            bits = int(mask)
            if bits > 32:
                raise InvalidNetwork(f"{spec!r}: an IPv4 prefix is at most 32")
        elif _DOTTED.fullmatch(mask):
            try:
                bits = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            except ValueError:
                raise InvalidNetwork(f"{spec!r}: {mask} is not a contiguous netmask") from None
        else:
            raise InvalidNetwork(f"{spec!r}: the mask must be a prefix length or a netmask")
    if _DOTTED.fullmatch(host):
        return (_v4_network(host, bits, spec),)
    if not host or not all(c.isalnum() or c in ".-_" for c in host):
        raise InvalidNetwork(f"{spec!r} is neither an address nor a host name")
    try:
        addresses = resolve(host)
    except OSError as exc:
        raise InvalidNetwork(f"{spec!r}: {host} does not resolve ({exc})") from None
    if not addresses:
        raise InvalidNetwork(f"{spec!r}: {host} does not resolve")
    nets: list[Network] = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if isinstance(ip, ipaddress.IPv4Address):
            nets.append(ipaddress.IPv4Network((ip, bits), strict=False))
        else:
            nets.append(ipaddress.IPv6Network((ip, 128)))
    return tuple(nets)


def _v4_network(address: str, bits: int, spec: str) -> Network:
    try:
        return ipaddress.IPv4Network((ipaddress.IPv4Address(address), bits), strict=False)
    except ValueError as exc:
        raise InvalidNetwork(f"{spec!r}: {exc}") from None


def client_is_trusted(client_ip: str, networks: Iterable[Network]) -> bool:
    """True if ``client_ip`` is in one of ``networks`` (an IPv4-mapped IPv6 address,
    as a dual-stack socket reports IPv4 clients, is matched as IPv4).

    An unparsable address (a Unix socket's empty peer name) is never trusted.
    """
    ip = _client_address(client_ip)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


# Parsing an address took a tenth of a connection's setup on the event loop; clients
# reconnect from the same few addresses, so keep the parsed ones (bounded).
@lru_cache(maxsize=1024)
def _client_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
