"""Narrow storage interfaces: the embedded SQLite store implements them today,
a PostgreSQL store later. Nothing outside storage/ writes SQL."""

from __future__ import annotations

from typing import Protocol

from kittiwake.policy.rewrite import Mapping, RewriteTable

__all__ = ["DomainStore", "RewriteStore", "UserStore"]


class DomainStore(Protocol):
    """The local domains. Names are stored lower-case, as IDNA A-labels (``xn--...``)."""

    def add_domain(self, domain: str) -> bool:
        """Add a domain; returns False if it was already there."""
        ...

    def remove_domain(self, domain: str) -> bool:
        """Remove a domain; returns False if it was not there."""
        ...

    def list_domains(self) -> list[str]: ...

    def contains_domain(self, domain: str) -> bool: ...


class UserStore(Protocol):
    """Mail users. A user name is a full address ``local@domain`` (virtual hosting);
    compared case-insensitively, stored lower-case with the domain as an A-label."""

    def add_user(self, username: str, password_hash: str | None) -> bool: ...

    def remove_user(self, username: str) -> bool: ...

    def list_users(self) -> list[str]: ...

    def contains_user(self, username: str) -> bool: ...

    def set_password_hash(self, username: str, password_hash: str) -> bool: ...

    def get_password_hash(self, username: str) -> str | None: ...


class RewriteStore(Protocol):
    """The recipient rewrite table (aliases): rows of :class:`Mapping`, stored in their
    canonical form (:func:`kittiwake.policy.rewrite.normalize_mapping`)."""

    def add_mapping(self, mapping: Mapping) -> bool:
        """Add a row; returns False if it was already there."""
        ...

    def remove_mapping(self, mapping: Mapping) -> bool:
        """Remove a row; returns False if it was not there."""
        ...

    def list_mappings(self) -> list[Mapping]: ...

    def rewrite_table(self) -> RewriteTable:
        """A snapshot of every row, the same object until the table changes."""
        ...
