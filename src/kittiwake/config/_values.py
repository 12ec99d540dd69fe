"""Value parsers for James's option syntax: booleans, integers, sizes, bind lists.

Each parser raises :class:`Invalid` with a reason; the caller adds file and element.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from kittiwake.config._errors import Invalid
from kittiwake.config.model import Bind

__all__ = [
    "HostLookup",
    "parse_address",
    "parse_binds",
    "parse_bool",
    "parse_int",
    "parse_size",
    "system_fqdn",
    "system_resolve",
]

_INT = re.compile(r"[+-]?[0-9]+")
# James's Size.parse: digits, then at most one unit letter; a plain number takes the
# caller's default unit (KiB for maxmessagesize).
_SIZE = re.compile(r"([+-]?[0-9]+)([bBkKmMgG]?)")
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Dotted digits only: getaddrinfo would read "010.1" as octal or a short form, so such a
# string must be a proper IPv4 literal or nothing.
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")


def system_fqdn() -> str:
    """This machine's fully qualified name, as James's ``getLocalHost().getHostName()``."""
    return socket.getfqdn()


def system_resolve(host: str) -> tuple[str, ...]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


@dataclass(frozen=True, slots=True)
class HostLookup:
    """What the loader asks of the machine; tests pass fakes instead of touching DNS.

    ``fqdn`` gives the host name used by ``helloName autodetect`` and ``domainlist``
    ``autodetect``; ``resolve`` turns a host name in ``<bind>`` into IP literals and
    raises ``OSError`` when it cannot.
    """

    fqdn: Callable[[], str] = system_fqdn
    resolve: Callable[[str], tuple[str, ...]] = system_resolve


def parse_bool(text: str) -> bool:
    """``true`` or ``false``, any case.

    James (commons-configuration) also takes yes/no/on/off; we refuse them so that a typo
    never silently flips a setting.

    Raises:
        Invalid: anything else.
    """
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise Invalid(f"{text!r} is not a boolean (expected true or false)")


def parse_int(text: str, low: int | None = None, high: int | None = None) -> int:
    """A decimal integer (as Java's ``Integer.parseInt``), optionally within ``low..high``.

    Raises:
        Invalid: not an integer, or out of range.
    """
    stripped = text.strip()
    if not _INT.fullmatch(stripped):
        raise Invalid(f"{text!r} is not an integer")
    value = int(stripped)
    if low is not None and high is not None and not low <= value <= high:
        raise Invalid(f"{value} is out of range {low}..{high}")
    if low is not None and value < low:
        raise Invalid(f"{value} is less than {low}")
    if high is not None and value > high:
        raise Invalid(f"{value} is more than {high}")
    return value


def parse_size(text: str, default_unit: str = "k") -> int:
    """A size in bytes, as James's ``Size.parse(text, Unit.K)`` reads ``maxmessagesize``.

    ``25M``, ``25m``, ``2G``, ``512K``, ``100B``; a plain number is KiB; ``0`` and
    ``unlimited`` (any case) mean no limit and give 0.

    Raises:
        Invalid: not a size, or negative (James would take a negative size as no limit;
            that is too surprising to accept).
    """
    stripped = text.strip()
    if stripped.lower() == "unlimited":
        return 0
    match = _SIZE.fullmatch(stripped)
    if not match:
        raise Invalid(
            f"{text!r} is not a size (a number with an optional unit B, K, M or G; "
            "a plain number is KiB)"
        )
    number = int(match.group(1))
    if number < 0:
        raise Invalid(f"{text!r} is negative (use 0 for no limit)")
    return number * _UNITS[(match.group(2) or default_unit).lower()]


def parse_address(text: str, resolve: Callable[[str], tuple[str, ...]]) -> tuple[str, ...]:
    """One host: an IPv4 or IPv6 literal (brackets allowed) or a host name, as IP literals.

    Raises:
        Invalid: empty, a malformed literal, or a name that does not resolve.
    """
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        try:
            return (str(ipaddress.IPv6Address(host[1:-1])),)
        except ValueError:
            raise Invalid(f"{host!r} is not an IPv6 address") from None
    if not host:
        raise Invalid("the address is empty")
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    if ":" in host or "[" in host or "]" in host or _DIGITS_AND_DOTS.fullmatch(host):
        raise Invalid(f"{host!r} is not an IP address")
    try:
        addresses = resolve(host)
    except (OSError, UnicodeError) as exc:
        raise Invalid(f"host name {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise Invalid(f"host name {host!r} has no address")
    try:
        return tuple(dict.fromkeys(str(ipaddress.ip_address(a)) for a in addresses))
    except ValueError:
        raise Invalid(f"host name {host!r} resolved to a non-address {addresses!r}") from None


def parse_binds(text: str, resolve: Callable[[str], tuple[str, ...]]) -> tuple[Bind, ...]:
    """James's ``<bind>``: comma-separated ``host:port`` entries.

    The host may be ``0.0.0.0``, ``::``, any IPv4 or IPv6 literal, or a host name
    (resolved now, every address it has is bound). IPv6 is written ``[::1]:25`` or, as
    James would split it, ``::1:25``: the port is what follows the last colon. James
    itself splits on the first colon and so cannot read IPv6 at all.

    Raises:
        Invalid: an empty entry, no port, a bad port (1..65535, or 0 for any free port)
            or a bad host.
    """
    binds: list[Bind] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise Invalid(f"{text.strip()!r} has an empty entry")
        host, colon, port_text = entry.rpartition(":")
        if not colon or not host:
            raise Invalid(f"{entry!r} is not host:port")
        try:
            port = parse_int(port_text, 0, 65535)
        except Invalid:
            raise Invalid(f"{entry!r} has a bad port {port_text!r} (expected 0..65535)") from None
        try:
            addresses = parse_address(host, resolve)
        except Invalid as exc:
            raise Invalid(f"{entry!r}: {exc}") from None
        for address in addresses:
            bind = Bind(address, port)
            if bind not in binds:
                binds.append(bind)
    return tuple(binds)
