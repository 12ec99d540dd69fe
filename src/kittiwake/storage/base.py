"""Narrow storage interfaces: the embedded SQLite store implements them today,
a PostgreSQL store later. Nothing outside storage/ writes SQL.

Besides users, domains and rewrites, what the server remembers of its clients lives
here too: greylisting triplets, rate-limit counters, spam-trap blocks and failed AUTHs.
Each is shared by every worker process (and, with PostgreSQL, every node), and each is
written on the hot path, so each call is one small transaction; the rules that decide
(greylisting's lifecycle, the sliding window) are pure functions in ``policy/`` that
every implementation applies inside that transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kittiwake.policy.greylist import GreylistTimes, GreylistVerdict, Triplet
from kittiwake.policy.ratelimit import WindowLimit
from kittiwake.policy.rewrite import Mapping, RewriteTable

__all__ = [
    "AuthFailureStore",
    "DomainStore",
    "GreylistStore",
    "HookStores",
    "RateLimitStore",
    "RewriteStore",
    "SpamTrapStore",
    "UserStore",
]


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


class GreylistStore(Protocol):
    """Greylisting triplets and when each was first and last seen."""

    async def check(self, triplet: Triplet, now: float, times: GreylistTimes) -> GreylistVerdict:
        """Apply :func:`kittiwake.policy.greylist.greylist_step` to what is stored of
        ``triplet`` and store the result, atomically across processes; now and then
        forget triplets past their lifetimes."""
        ...

    def close(self) -> None: ...


class RateLimitStore(Protocol):
    """Event counters per key and fixed window (:mod:`kittiwake.policy.ratelimit`)."""

    async def take(self, limits: Sequence[WindowLimit], now: float) -> WindowLimit | None:
        """Count one event under every limit's key, all or none, atomically across
        processes.

        Returns:
            None if the event was counted; else the first limit it would exceed (and
            nothing was counted).
        """
        ...

    def close(self) -> None: ...


class SpamTrapStore(Protocol):
    """Clients blocked for writing to a spam trap, and until when."""

    async def check(self, client: str, now: float, block_until: float | None = None) -> bool:
        """True if ``client`` is blocked at ``now``. With ``block_until`` (the client
        wrote to a trap), block it until then, in the same transaction, and say True."""
        ...

    def close(self) -> None: ...


class AuthFailureStore(Protocol):
    """Failed AUTH attempts per client address, and the addresses blocked for them.
    Blocking calls: callers run them in a thread."""

    def blocked(self, ip: str) -> bool:
        """``ip`` is in its penalty time: every AUTH gets 454 4.7.0."""
        ...

    def record_failure(self, ip: str, *, limit: int, window: float) -> bool:
        """Count one failure of ``ip``.

        Args:
            limit: failures within ``window`` that block the address (0: never).
            window: seconds counted back, and seconds the block lasts.

        Returns:
            True if this failure used up the budget (the address is now blocked).
        """
        ...

    def close(self) -> None: ...


class HookStores(Protocol):
    """Opens the stores of the handlers that remember. Each call opens a store of its
    own (a connection, a thread), which the handler closes at its stop."""

    def greylist(self) -> GreylistStore: ...

    def rate_limits(self) -> RateLimitStore: ...

    def spam_traps(self) -> SpamTrapStore: ...
