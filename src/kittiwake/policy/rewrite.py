"""The recipient rewrite table (James's RRT): address, domain, forward and regex
mappings, and the addresses a recipient finally stands for.

Theory of operation
-------------------
A :class:`RewriteTable` is an immutable snapshot of the mappings (the store builds it
once per change). :func:`expand` maps a recipient the way James's
``AbstractRecipientRewriteTable`` does:

1. an **address** or **forward** mapping of the exact address (``sales@a.test`` ->
   ``alice@a.test``, several targets allowed);
2. else every **regex** mapping whose pattern matches the whole address (lower case),
   its replacement written with James's ``${1}`` group references;
3. else a **domain** mapping of its domain (``@alias.test`` -> ``@a.test``: the same
   local part in the target domain).

Each target is mapped again (James's ``recursiveMapping``), at most ``limit`` levels
deep (``mappingLimit``, 10): deeper means a loop, and the recipient is refused. A target
equal to the address it came from stops there, so ``alice -> alice, bob@remote`` keeps a
copy and forwards one. Address and forward mappings expand alike; they differ for the
sender identity (:func:`senders_for`): an address mapping makes its source an alias
the target user may send from (James's ``alias``), a forward does not.

Pure: no I/O; the session and the spool runner use it through the store's snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain

__all__ = [
    "DEFAULT_MAPPING_LIMIT",
    "EMPTY_TABLE",
    "Expansion",
    "Mapping",
    "MappingKind",
    "RewriteTable",
    "expand",
    "normalize_mapping",
    "senders_for",
]

#: James ``mappingLimit``: deeper than this, a mapping chain is a loop
DEFAULT_MAPPING_LIMIT = 10
#: most addresses one recipient may expand to (a mapping typo must not fan out forever)
MAX_EXPANSION = 1000
_GROUP_REF = re.compile(r"\$\{(\d+)\}")


class MappingKind(Enum):
    ADDRESS = "address"
    DOMAIN = "domain"
    FORWARD = "forward"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class Mapping:
    """One row of the rewrite table.

    Attributes:
        kind: what ``source`` and ``target`` are.
        source: address and forward: a canonical address; domain: a canonical domain;
            regex: a Python regular expression matched against the whole address.
        target: address and forward: an address (its domain canonical); domain: a
            canonical domain; regex: the replacement, ``${n}`` for group n.
    """

    kind: MappingKind
    source: str
    target: str


def normalize_mapping(kind: MappingKind, source: str, target: str) -> Mapping:
    """Check a mapping and put it in its stored form.

    Raises:
        InvalidName: a source or target that is no address (or domain); a regex that
            does not compile, or whose replacement names a group it does not have.
    """
    if kind is MappingKind.DOMAIN:
        src, dst = canonical_domain(source.lstrip("@")), canonical_domain(target.lstrip("@"))
        if src == dst:
            raise InvalidName(f"{source} maps to itself")
        return Mapping(kind, src, dst)
    if kind is MappingKind.REGEX:
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise InvalidName(f"{source!r} is not a regular expression: {exc}") from None
        for ref in _GROUP_REF.findall(target):
            if int(ref) > pattern.groups:
                raise InvalidName(f"{target!r} uses ${{{ref}}}; {source!r} has {pattern.groups}")
        return Mapping(kind, source, target)
    # A mapping onto itself is allowed: beside other targets it keeps a local copy.
    return Mapping(kind, canonical_address(source), _canonical_target(target))


def _sort_key(m: Mapping) -> tuple[str, str, str]:
    return (m.source, m.kind.value, m.target)


def _canonical_target(address: str) -> str:
    """The domain canonical, the local part as written (a remote host may care)."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidName(address)
    return f"{local}@{canonical_domain(domain)}"


class RewriteTable:
    """An immutable snapshot of the mappings, indexed for lookups."""

    __slots__ = ("_addresses", "_aliases_of", "_domains", "_regexes", "mappings")

    def __init__(self, mappings: Iterable[Mapping] = ()) -> None:
        self.mappings: tuple[Mapping, ...] = tuple(sorted(set(mappings), key=_sort_key))
        addresses: dict[str, list[str]] = {}
        aliases_of: dict[str, list[str]] = {}  # target -> address-mapping sources
        domains: dict[str, list[str]] = {}
        regexes: list[tuple[re.Pattern[str], str]] = []
        for m in self.mappings:
            if m.kind is MappingKind.DOMAIN:
                domains.setdefault(m.source, []).append(m.target)
            elif m.kind is MappingKind.REGEX:
                regexes.append((re.compile(m.source), m.target))
            else:
                addresses.setdefault(m.source, []).append(m.target)
                if m.kind is MappingKind.ADDRESS:
                    aliases_of.setdefault(canonical_address(m.target), []).append(m.source)
        self._addresses = {k: tuple(v) for k, v in addresses.items()}
        self._aliases_of = {k: tuple(v) for k, v in aliases_of.items()}
        self._domains = {k: tuple(v) for k, v in domains.items()}
        self._regexes = tuple(regexes)

    def __bool__(self) -> bool:
        return bool(self.mappings)

    def is_alias_domain(self, domain: str) -> bool:
        """``domain`` (canonical) is the source of a domain mapping: mail to it is local."""
        return domain in self._domains

    def alias_domains_of(self, domain: str) -> tuple[str, ...]:
        """The domains mapped onto ``domain`` (canonical)."""
        return tuple(src for src, dsts in self._domains.items() if domain in dsts)

    def has_mapping(self, address: str) -> bool:
        """``address`` is rewritten by some mapping (it need not be a user)."""
        try:
            key = canonical_address(address)
        except InvalidName:
            return False
        return self._map_once(key) is not None

    def _map_once(self, key: str) -> tuple[str, ...] | None:
        targets = self._addresses.get(key)
        if targets is not None:
            return targets
        if self._regexes:
            found = [_substitute(p, r, key) for p, r in self._regexes if p.fullmatch(key)]
            if found:
                return tuple(found)
        local, _, domain = key.rpartition("@")
        domains = self._domains.get(domain)
        if domains is not None:
            return tuple(f"{local}@{d}" for d in domains)
        return None


def _substitute(pattern: re.Pattern[str], replacement: str, key: str) -> str:
    match = pattern.fullmatch(key)
    assert match is not None
    return _GROUP_REF.sub(lambda m: match.group(int(m.group(1))) or "", replacement)


EMPTY_TABLE = RewriteTable()


@dataclass(frozen=True, slots=True)
class Expansion:
    """What one recipient stands for.

    Attributes:
        addresses: the final addresses, in order, each once; the recipient itself when
            no mapping applies.
        rewritten: some mapping applied.
        loop: the chain went deeper than the limit (or fanned out past
            :data:`MAX_EXPANSION`): nothing is delivered, the recipient is refused.
    """

    addresses: tuple[str, ...]
    rewritten: bool = False
    loop: bool = False


class _Loop(Exception):
    pass


def expand(address: str, table: RewriteTable, limit: int = DEFAULT_MAPPING_LIMIT) -> Expansion:
    """The addresses ``address`` is finally delivered to (see the module docstring)."""
    if not table:
        return Expansion((address,))
    out: dict[str, str] = {}  # canonical -> as written

    def walk(addr: str, depth: int) -> None:
        try:
            key = canonical_address(addr)
        except InvalidName:
            out.setdefault(addr, addr)  # not mappable (e.g. an address literal)
            return
        targets = table._map_once(key)
        if targets is None:
            out.setdefault(key, addr)
        elif depth >= limit:
            raise _Loop
        else:
            for target in targets:
                if _same(target, key):
                    out.setdefault(key, addr)
                else:
                    walk(target, depth + 1)
        if len(out) > MAX_EXPANSION:
            raise _Loop

    try:
        walk(address, 0)
    except _Loop:
        return Expansion((), rewritten=True, loop=True)
    addresses = tuple(out.values())
    return Expansion(addresses, rewritten=addresses != (address,))


def _same(target: str, key: str) -> bool:
    try:
        return canonical_address(target) == key
    except InvalidName:
        return False


def senders_for(
    user: str, table: RewriteTable, limit: int = DEFAULT_MAPPING_LIMIT
) -> frozenset[str]:
    """Every address ``user`` may send as (James's ``CanSendFrom``): the user, the
    sources of address mappings leading to it (recursively, at most ``limit`` levels),
    and each of those in every domain mapped onto its domain. Forward and regex
    mappings give no such right.

    Args:
        user: a canonical user name (``local@domain``).
    """
    found = {user}
    frontier = [user]
    for _ in range(limit):
        step = [
            src for addr in frontier for src in table._aliases_of.get(addr, ()) if src not in found
        ]
        if not step:
            break
        found.update(step)
        frontier = step
    with_domains = set(found)
    for addr in found:
        local, _, domain = addr.rpartition("@")
        seen = {domain}
        todo = [domain]
        while todo:
            for alias in table.alias_domains_of(todo.pop()):
                if alias not in seen and len(seen) <= limit:
                    seen.add(alias)
                    todo.append(alias)
                    with_domains.add(f"{local}@{alias}")
    return frozenset(with_domains)
