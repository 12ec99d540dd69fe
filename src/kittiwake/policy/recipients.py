"""Who may receive mail here: the RCPT decision and the mailbox it leads to.

Pure functions over facts the session gathered (domain store, user store); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

__all__ = ["ROLE_ACCOUNTS", "RcptFacts", "mailbox_for", "rcpt_reply"]

#: accepted for every local domain and delivered to the postmaster
#: (RFC 5321 4.5.1 postmaster; RFC 2142 section 4 abuse)
ROLE_ACCOUNTS = frozenset({"postmaster", "abuse"})


@dataclass(frozen=True, slots=True)
class RcptFacts:
    """What is known about one recipient when RCPT is decided.

    Attributes:
        local_part: lower-cased local part ("postmaster" for a bare <postmaster>).
        domain: canonical domain (A-label), "" for a bare <postmaster>, None when the
            domain has no canonical form (invalid IDNA, IP literal, trailing dot).
        domain_is_local: the domain is one of the local domains (or a domain alias).
        user_exists: ``local_part@domain`` is a known user, or the rewrite table maps
            it to at least one address that can take mail (a user, a role account, a
            remote address).
        literal: the domain is an address literal (``[192.0.2.1]``).
        loop: the rewrite table's mappings for it loop (or go deeper than the limit).
    """

    local_part: str
    domain: str | None
    domain_is_local: bool
    user_exists: bool
    literal: bool = False
    loop: bool = False


def rcpt_reply(f: RcptFacts) -> Reply | None:
    """None = no objection, for a recipient in a local domain (or a bare postmaster).
    Recipients elsewhere are refused here: whether they may be relayed is
    :func:`kittiwake.policy.relay.recipient_reply`'s decision, which comes first."""
    if f.domain == "":
        return None if f.local_part == "postmaster" else R.BAD_RECIPIENT_SYNTAX
    if f.domain is None or not f.domain_is_local:
        return R.RELAY_DENIED
    if f.loop:
        return R.ROUTING_LOOP
    if f.local_part in ROLE_ACCOUNTS or f.user_exists:
        return None
    return R.NO_SUCH_USER


def mailbox_for(f: RcptFacts, postmaster: str) -> str | None:
    """The canonical mailbox an accepted recipient is delivered to (None: none)."""
    if f.domain == "" or (f.domain_is_local and f.local_part in ROLE_ACCOUNTS):
        return postmaster
    if f.domain_is_local and f.user_exists:
        return f"{f.local_part}@{f.domain}"
    return None
