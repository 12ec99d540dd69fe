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
        domain_is_local: the domain is one of the local domains.
        user_exists: ``local_part@domain`` is a known user.
    """

    local_part: str
    domain: str | None
    domain_is_local: bool
    user_exists: bool


def rcpt_reply(f: RcptFacts) -> Reply | None:
    """None = no objection. Kittiwake is never an open relay: without AUTH (a later
    issue) every recipient outside the local domains is refused."""
    if f.domain == "":
        return None if f.local_part == "postmaster" else R.BAD_RECIPIENT_SYNTAX
    if f.domain is None or not f.domain_is_local:
        return R.RELAY_DENIED
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
