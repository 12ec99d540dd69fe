"""``kittiwake alias add|remove|list`` and ``kittiwake user import``: the rewrite table
and James users, from the command line (``cli.py`` parses and dispatches).

``alias add SOURCE TARGET``: an address mapping (``sales@a.test`` -> ``alice@a.test``;
the user of the target may send as the source); ``--type forward`` the same without
that right; ``--type domain`` (or a source written ``@alias.test``) maps a whole domain;
``--type regex`` matches the whole address with a Python regular expression, the target
using James's ``${1}`` for groups. A mapping that would loop is refused.

``user import`` reads James users from standard input (or ``--file``), one per line:
``NAME HASH`` or ``NAME ALGORITHM HASH`` (white space, comma or semicolon between; ``#``
starts a comment), as James's database holds them (``USER_NAME``,
``PASSWORD_HASH_ALGORITHM``, ``PASSWORD`` with its line breaks removed). NAME is also
the salt James used. A line without an algorithm takes ``usersrepository.xml``'s
``algorithm`` and ``hashingMode``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Protocol, TextIO

from kittiwake.auth.james_hashes import UnsupportedAlgorithm, to_stored
from kittiwake.config.model import Config
from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.rewrite import (
    Mapping,
    MappingKind,
    RewriteTable,
    expand,
    normalize_mapping,
)
from kittiwake.storage.base import DomainStore, RewriteStore, UserStore

__all__ = ["CommandError", "alias_command", "import_users", "login_name"]

_FIELDS = re.compile(r"[\s,;]+")


class CommandError(Exception):
    """The command failed for a reason the user can fix (printed, no traceback)."""


class Store(DomainStore, UserStore, RewriteStore, Protocol):
    pass


def login_name(config: Config, name: str) -> str:
    """A user name as kittiwake stores it: without virtual hosting (James
    ``enableVirtualHosting false``), a name without "@" is in the default domain.

    Raises:
        CommandError: not an address.
    """
    if "@" not in name and not config.users.virtual_hosting:
        name = f"{name}@{config.domains.default_domain}"
    try:
        return canonical_address(name)
    except InvalidName:
        raise CommandError(f"not a valid address: {name!r} (use the full address)") from None


def _kind(kind: str | None, source: str) -> MappingKind:
    if kind is not None:
        return MappingKind(kind)
    return MappingKind.DOMAIN if source.startswith("@") else MappingKind.ADDRESS


def _describe(m: Mapping) -> str:
    if m.kind is MappingKind.DOMAIN:
        return f"domain  @{m.source} -> @{m.target}"
    return f"{m.kind.value:<7} {m.source} -> {m.target}"


def alias_command(
    store: Store, action: str, source: str | None, target: str | None, kind: str | None
) -> list[str]:
    """Run ``alias add|remove|list``; returns the lines to print.

    Raises:
        CommandError: a bad name, a non-local source, a loop, or nothing to remove.
    """
    if action == "list":
        rows = store.list_mappings()
        if source is not None:
            rows = [m for m in rows if source.lower().lstrip("@") in m.source]
        return [_describe(m) for m in rows]
    assert source is not None and target is not None
    mapping_kind = _kind(kind, source)
    try:
        mapping = normalize_mapping(mapping_kind, source, target)
    except InvalidName as exc:
        raise CommandError(f"not a valid {mapping_kind.value} mapping: {exc}") from None
    if action == "remove":
        if not store.remove_mapping(mapping):
            raise CommandError(f"no such mapping: {_describe(mapping)}")
        return [f"removed {_describe(mapping)}"]
    notes = []
    if mapping_kind in (MappingKind.ADDRESS, MappingKind.FORWARD):
        domain = mapping.source.rpartition("@")[2]
        table = store.rewrite_table()
        if not (store.contains_domain(domain) or table.is_alias_domain(domain)):
            raise CommandError(
                f"{domain} is not a local domain: mail to {mapping.source} would not come "
                f"here; add it with: kittiwake domain add {domain}"
            )
        trial = RewriteTable([*table.mappings, mapping])
        if expand(mapping.source, trial).loop:
            raise CommandError(f"{_describe(mapping)} would make a loop (more than 10 levels)")
    elif mapping_kind is MappingKind.DOMAIN and not store.contains_domain(mapping.target):
        notes.append(f"note: {mapping.target} is not a local domain: its mail is relayed")
    if not store.add_mapping(mapping):
        raise CommandError(f"mapping exists already: {_describe(mapping)}")
    return [f"added {_describe(mapping)}", *notes]


def import_users(
    store: Store,
    config: Config,
    lines: Iterable[str],
    *,
    domain: str | None = None,
    replace: bool = False,
    err: TextIO = sys.stderr,
) -> tuple[int, int]:
    """Import James users; returns (imported, refused). Each refused line is named on
    ``err`` with its number and reason (never its hash).

    Args:
        domain: appended to names without "@" (default: the default domain when James
            had no virtual hosting; else such a name is refused).
        replace: an existing user's hash is replaced (else the line is refused).
    """
    imported = refused = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = _FIELDS.split(line)
        try:
            user, stored = _import_line(fields, config, domain)
            if not store.contains_domain(user.rpartition("@")[2]):
                raise CommandError(f"{user.rpartition('@')[2]} is not a local domain")
            if store.contains_user(user):
                if not replace:
                    raise CommandError(f"user {user} exists already (--replace replaces it)")
                store.set_password_hash(user, stored)
            else:
                store.add_user(user, stored)
        except CommandError as exc:
            print(f"line {number}: {exc}", file=err)
            refused += 1
            continue
        imported += 1
    return imported, refused


def _import_line(fields: list[str], config: Config, domain: str | None) -> tuple[str, str]:
    if len(fields) == 2:
        name, hash_b64 = fields
        algorithm = config.users.algorithm
    elif len(fields) == 3:
        name, algorithm, hash_b64 = fields
    else:
        raise CommandError("expected NAME [ALGORITHM] HASH")
    if "@" in name:
        full = name
    elif domain is not None:
        full = f"{name}@{domain}"
    elif not config.users.virtual_hosting:
        full = f"{name}@{config.domains.default_domain}"
    else:
        raise CommandError(f"{name!r} has no domain (give --domain)")
    try:
        user = canonical_address(full)
        canonical_domain(user.rpartition("@")[2])
    except InvalidName:
        raise CommandError(f"{full!r} is not a valid address") from None
    try:
        # The salt is the name as James knew it (it lower-cases user names).
        stored = to_stored(algorithm, name.lower(), hash_b64, config.users.hashing_mode)
    except UnsupportedAlgorithm as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return user, stored
