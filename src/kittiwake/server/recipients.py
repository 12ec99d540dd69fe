"""Facts about a recipient, gathered from the stores for the pure rules in
``policy.recipients`` and ``policy.relay``; used at RCPT time and again at delivery time.

At RCPT the recipient rewrite table (aliases) is applied (:func:`gather`) to judge the
recipient: an alias leading to a user (or elsewhere) can take mail, one leading only to
unknown local users cannot, a loop is refused. The envelope keeps the address as
given; the mailet container's RecipientRewriteTable rewrites it at delivery, as James
does (``Recipient.targets`` is what that will give).
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.recipients import ROLE_ACCOUNTS, RcptFacts, mailbox_for
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable, expand
from kittiwake.storage.base import DomainStore, UserStore

__all__ = ["LocalResolver", "Recipient", "domain_is_local", "gather", "recipient_facts"]


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT: the facts the rules judge, and the addresses it is delivered to."""

    facts: RcptFacts
    targets: tuple[str, ...]


def domain_is_local(domain: str, domains: DomainStore, table: RewriteTable) -> bool:
    """``domain`` (canonical) is a local domain or the source of a domain alias."""
    return domains.contains_domain(domain) or table.is_alias_domain(domain)


def gather(
    address: str, domains: DomainStore, users: UserStore, table: RewriteTable = EMPTY_TABLE
) -> Recipient:
    """What the RCPT rules need to know about ``address``, and its final addresses."""
    local, at, domain = address.rpartition("@")
    if not at:
        return Recipient(RcptFacts(address.lower(), "", False, False), (address,))
    local = local.lower()
    if domain.startswith("["):
        return Recipient(RcptFacts(local, None, False, False, literal=True), (address,))
    try:
        canonical = canonical_domain(domain)
    except InvalidName:
        return Recipient(RcptFacts(local, None, False, False), (address,))
    if not domain_is_local(canonical, domains, table):
        return Recipient(RcptFacts(local, canonical, False, False), (address,))
    expansion = expand(address, table)
    if expansion.loop:
        return Recipient(RcptFacts(local, canonical, True, False, loop=True), ())
    if not expansion.rewritten:
        exists = users.contains_user(f"{local}@{canonical}")
        return Recipient(RcptFacts(local, canonical, True, exists), (address,))
    exists = any(_deliverable(t, domains, users, table) for t in expansion.addresses)
    return Recipient(RcptFacts(local, canonical, True, exists), expansion.addresses)


def _deliverable(target: str, domains: DomainStore, users: UserStore, table: RewriteTable) -> bool:
    """A final address can take mail: a local user, a role account, or elsewhere."""
    try:
        key = canonical_address(target)
    except InvalidName:
        return True  # an address literal or the like: not ours to judge, delivery is
    local, _, domain = key.rpartition("@")
    if not domain_is_local(domain, domains, table):
        return True
    return local in ROLE_ACCOUNTS or users.contains_user(key)


def recipient_facts(
    address: str, domains: DomainStore, users: UserStore, table: RewriteTable = EMPTY_TABLE
) -> RcptFacts:
    """What the RCPT policy needs to know about ``address``."""
    return gather(address, domains, users, table).facts


class LocalResolver:
    """Maps an accepted recipient to the mailbox it is delivered to."""

    def __init__(self, domains: DomainStore, users: UserStore, postmaster: str) -> None:
        self.domains = domains
        self.users = users
        self.postmaster = canonical_address(postmaster)

    def resolve(self, recipient: str) -> str | None:
        """The canonical mailbox address for ``recipient``, None if there is none."""
        return mailbox_for(recipient_facts(recipient, self.domains, self.users), self.postmaster)

    def is_remote(self, recipient: str) -> bool:
        """``recipient`` is for another host (relayed or forwarded): RemoteDelivery's,
        not a mailbox here. A bare ``postmaster`` is local."""
        _local, at, domain = recipient.rpartition("@")
        if not at:
            return False
        try:
            return not self.domains.contains_domain(canonical_domain(domain))
        except InvalidName:
            return True  # an address literal: never local (no autodetectIP)
