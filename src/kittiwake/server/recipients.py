"""Facts about a recipient, gathered from the stores for the pure rules in
``policy.recipients``; used at RCPT time and again at delivery time."""

from __future__ import annotations

from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.recipients import RcptFacts, mailbox_for
from kittiwake.storage.base import DomainStore, UserStore

__all__ = ["LocalResolver", "recipient_facts"]


def recipient_facts(address: str, domains: DomainStore, users: UserStore) -> RcptFacts:
    """What the RCPT policy needs to know about ``address``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return RcptFacts(address.lower(), "", False, False)
    local = local.lower()
    try:
        canonical = canonical_domain(domain)
    except InvalidName:
        return RcptFacts(local, None, False, False)
    is_local = domains.contains_domain(canonical)
    exists = is_local and users.contains_user(f"{local}@{canonical}")
    return RcptFacts(local, canonical, is_local, exists)


class LocalResolver:
    """Maps an accepted recipient to the mailbox it is delivered to."""

    def __init__(self, domains: DomainStore, users: UserStore, postmaster: str) -> None:
        self.domains = domains
        self.users = users
        self.postmaster = canonical_address(postmaster)

    def resolve(self, recipient: str) -> str | None:
        """The canonical mailbox address for ``recipient``, None if there is none."""
        return mailbox_for(recipient_facts(recipient, self.domains, self.users), self.postmaster)
