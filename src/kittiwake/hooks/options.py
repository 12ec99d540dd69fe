"""A handler's nested configuration, read with James's value syntax.

``<handler class="...MaxRcptHandler"><maxRcpt>10</maxRcpt></handler>`` reaches the
handler as a :class:`HandlerOptions`; ``options.integer("maxRcpt", low=1)`` reads it.
A bad value raises :class:`OptionError`, which the loader turns into a configuration
error naming the file, the element and the reason. Options a handler never reads are
named at start (never silently ignored).
"""

from __future__ import annotations

import ipaddress
import re

from kittiwake.config._errors import Invalid
from kittiwake.config._values import parse_bool, parse_int, parse_size
from kittiwake.config.model import OptionNode

__all__ = ["HandlerOptions", "OptionError", "parse_duration", "parse_networks"]

# James's TimeConverter and DurationParser units; a plain number takes the caller's unit.
_DURATION = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*")
_UNITS: dict[str, float] = {
    **dict.fromkeys(("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
}


class OptionError(ValueError):
    """A handler option is missing or bad.

    Args:
        where: the option's path below the ``<handler>`` (``<maxRcpt>``), "" for the
            handler itself.
        reason: what is wrong, for the administrator.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


def parse_duration(text: str, default_unit: str = "ms") -> float:
    """James's durations, in seconds: ``1 hour``, ``36 days``, ``30s``, ``500``.

    Units: ms, s, m (minutes), h, d, w and their long forms (``msec``, ``seconds``,
    ``minutes``, ``hours``, ``days`` ...), any case. A plain number is in
    ``default_unit`` (James's TimeConverter: milliseconds).

    Raises:
        Invalid: not a number with a known unit.
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise Invalid(f"{text!r} is not a duration (a number and a unit such as 5s, 1 hour)")
    unit = (match.group(2) or default_unit).lower()
    if unit not in _UNITS:
        raise Invalid(f"{text!r} has an unknown unit {match.group(2)!r} (ms, s, m, h, d, w)")
    return int(match.group(1)) * _UNITS[unit]


class HandlerOptions:
    """Typed access to one element of a handler's configuration.

    Args:
        node: the element (the ``<handler>`` itself at the top).
        path: where it is below the ``<handler>``, for messages ("" at the top).
    """

    def __init__(self, node: OptionNode | None = None, path: str = "") -> None:
        self.node = node if node is not None else OptionNode("handler")
        self.path = path
        self._read: set[str] = set()
        self._children: list[HandlerOptions] = []

    # ---- structure ------------------------------------------------------------------

    @property
    def text_value(self) -> str:
        """The element's own text (``<allowedSender>a@b.test</allowedSender>``)."""
        return self.node.text

    def where(self, name: str) -> str:
        return f"{self.path}/<{name}>" if self.path else f"<{name}>"

    def _all(self, name: str) -> list[OptionNode]:
        self._read.add(name)
        return [child for child in self.node.children if child.tag == name]

    def has(self, name: str) -> bool:
        return bool(self._all(name))

    def child(self, name: str) -> HandlerOptions | None:
        """The first ``<name>`` element, or None."""
        found = self._all(name)
        if not found:
            return None
        sub = HandlerOptions(found[0], self.where(name))
        self._children.append(sub)
        return sub

    def children(self, name: str) -> list[HandlerOptions]:
        """Every ``<name>`` element, in order."""
        subs = [HandlerOptions(node, self.where(name)) for node in self._all(name)]
        self._children.extend(subs)
        return subs

    def attribute(self, name: str, default: str | None = None) -> str | None:
        return dict(self.node.attributes).get(name, default)

    def unread(self) -> list[str]:
        """Paths of the elements no handler code asked for (named at start)."""
        out = [self.where(c.tag) for c in self.node.children if c.tag not in self._read]
        for sub in self._children:
            out.extend(sub.unread())
        return list(dict.fromkeys(out))

    # ---- values ---------------------------------------------------------------------

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        """The text of the first ``<name>`` (stripped), ``default`` when absent.

        Raises:
            OptionError: ``required`` and absent or empty, or the element has children.
        """
        found = self._all(name)
        if not found or (required and not found[0].text):
            if required:
                raise OptionError(self.where(name), "is required")
            return default
        if found[0].children:
            raise OptionError(self.where(name), "expected a plain value, found elements inside")
        return found[0].text

    def texts(self, name: str) -> list[str]:
        """The texts of every ``<name>``, empty ones skipped."""
        return [node.text for node in self._all(name) if node.text]

    def boolean(self, name: str, default: bool) -> bool:
        text = self.text(name)
        if text is None:
            return default
        try:
            return parse_bool(text)
        except Invalid as exc:
            raise OptionError(self.where(name), str(exc)) from None

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        """An integer; absent gives ``default`` (None: the option is required)."""
        text = self.text(name, required=default is None)
        if text is None:
            assert default is not None
            return default
        try:
            return parse_int(text, low, high)
        except Invalid as exc:
            raise OptionError(self.where(name), str(exc)) from None

    def duration(
        self, name: str, default: float | None = None, *, unit: str = "ms", low: float = 0.0
    ) -> float:
        """A duration in seconds (see :func:`parse_duration`); None default: required."""
        text = self.text(name, required=default is None)
        if text is None:
            assert default is not None
            return default
        try:
            value = parse_duration(text, unit)
        except Invalid as exc:
            raise OptionError(self.where(name), str(exc)) from None
        if value < low or (value == 0 and low > 0):
            raise OptionError(self.where(name), f"{text!r} is too short")
        return value

    def size(self, name: str, default: int, *, unit: str = "k") -> int:
        """A size in bytes (``64K``, ``1M``; a plain number is in ``unit``)."""
        text = self.text(name)
        if text is None:
            return default
        try:
            return parse_size(text, unit)
        except Invalid as exc:
            raise OptionError(self.where(name), str(exc)) from None

    def networks(self, name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Every network in every ``<name>`` (comma or space separated)."""
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for text in self.texts(name):
            try:
                out.extend(parse_networks(text))
            except Invalid as exc:
                raise OptionError(self.where(name), str(exc)) from None
        return out


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """James's network lists (``NetMatcher``): ``192.0.2.1``, ``192.0.2.0/24``,
    ``192.0.2.0/255.255.255.0``, ``192.0.*`` and IPv6 ``2001:db8::/32``, separated by
    commas or spaces. Host names are not accepted (a lookup at start would pin one
    answer; write the addresses).

    Raises:
        Invalid: an entry that is none of these.
    """
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in re.split(r"[,\s]+", text.strip()):
        if not entry:
            continue
        spec = entry
        if "*" in spec:
            # 10.*, 10.1.*, 10.1.2.*: a wildcard only at the end (James InetNetworkBuilder)
            octets = [o for o in spec.split(".") if o != "*"]
            if not 1 <= len(octets) <= 3 or spec.count("*") != 1 or not spec.endswith(".*"):
                raise Invalid(f"{entry!r}: a wildcard goes only at the end, as in 10.1.*")
            spec = ".".join(octets + ["0"] * (4 - len(octets))) + f"/{8 * len(octets)}"
        try:
            networks.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            raise Invalid(f"{entry!r} is not an address or network") from None
    return networks
