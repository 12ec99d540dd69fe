"""In-memory domain and user store: the fake the tests use ("never fails, remembers
everything", like chasquid's ``TestCourier``). Same rules and canonical forms as
:class:`~kittiwake.storage.sqlite.SqliteStore`; the contract tests run against both.
"""

from __future__ import annotations

from kittiwake.policy.rewrite import EMPTY_TABLE, Mapping, RewriteTable
from kittiwake.storage._names import domain_key, user_key

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~kittiwake.storage.base.DomainStore` and
    :class:`~kittiwake.storage.base.UserStore` held in two dicts."""

    def __init__(self) -> None:
        self._domains: set[str] = set()
        self._users: dict[str, str | None] = {}
        self._mappings: set[Mapping] = set()
        self._table = EMPTY_TABLE

    # -- domains ---------------------------------------------------------------

    def add_domain(self, domain: str) -> bool:
        """Add a domain.

        Args:
            domain: any case, U- or A-labels; stored canonical.

        Returns:
            False if it was already there.

        Raises:
            InvalidName: the name has no canonical form or is unsafe as a directory name.
        """
        key = domain_key(domain)
        if key in self._domains:
            return False
        self._domains.add(key)
        return True

    def remove_domain(self, domain: str) -> bool:
        """Remove a domain; returns False if it was not there.

        Raises:
            InvalidName: the name has no canonical form.
        """
        key = domain_key(domain)
        if key not in self._domains:
            return False
        self._domains.discard(key)
        return True

    def list_domains(self) -> list[str]:
        """Return the canonical domain names, sorted."""
        return sorted(self._domains)

    def contains_domain(self, domain: str) -> bool:
        """True if ``domain`` (any form) is local; False also for an invalid name."""
        try:
            return domain_key(domain) in self._domains
        except ValueError:
            return False

    # -- users -----------------------------------------------------------------

    def add_user(self, username: str, password_hash: str | None) -> bool:
        """Add a user (a full address).

        Args:
            username: ``local@domain``, stored canonical.
            password_hash: the hash to keep, or None for a user who cannot log in.

        Returns:
            False if the user was already there (its hash is left unchanged).

        Raises:
            InvalidName: not a valid, safe address.
        """
        key = user_key(username)
        if key in self._users:
            return False
        self._users[key] = password_hash
        return True

    def remove_user(self, username: str) -> bool:
        """Remove a user; returns False if it was not there.

        Raises:
            InvalidName: not a valid address.
        """
        return self._users.pop(user_key(username), _MISSING) is not _MISSING

    def list_users(self) -> list[str]:
        """Return the canonical user names, sorted."""
        return sorted(self._users)

    def contains_user(self, username: str) -> bool:
        """True if the user exists; False also for an invalid name."""
        try:
            return user_key(username) in self._users
        except ValueError:
            return False

    def set_password_hash(self, username: str, password_hash: str) -> bool:
        """Replace a user's password hash; returns False if there is no such user.

        Raises:
            InvalidName: not a valid address.
        """
        key = user_key(username)
        if key not in self._users:
            return False
        self._users[key] = password_hash
        return True

    def get_password_hash(self, username: str) -> str | None:
        """Return the user's hash, or None (no such user, no password, invalid name)."""
        try:
            return self._users.get(user_key(username))
        except ValueError:
            return None

    # -- rewrite table ---------------------------------------------------------

    def add_mapping(self, mapping: Mapping) -> bool:
        """Add a mapping (already normalized); returns False if it was there."""
        if mapping in self._mappings:
            return False
        self._mappings.add(mapping)
        self._table = RewriteTable(self._mappings)
        return True

    def remove_mapping(self, mapping: Mapping) -> bool:
        """Remove a mapping; returns False if it was not there."""
        if mapping not in self._mappings:
            return False
        self._mappings.discard(mapping)
        self._table = RewriteTable(self._mappings)
        return True

    def list_mappings(self) -> list[Mapping]:
        """Every mapping, sorted by source, kind, target."""
        return list(self._table.mappings)

    def rewrite_table(self) -> RewriteTable:
        return self._table


_MISSING = object()
