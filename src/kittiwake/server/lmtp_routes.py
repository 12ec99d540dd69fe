"""Where an LMTP recipient goes once the rewrite table is applied, and the one reply it
gets for all of it (RFC 2033 4.2: one reply per RCPT that was accepted).

As James applies its recipient rewrite table (aliases: address, domain, forward and
regex mappings) before the mailboxes, an LMTP recipient is expanded
(:func:`~kittiwake.policy.rewrite.expand`) into final addresses: each in a local
domain is a mailbox here (or none: ``5.1.1`` for that part), each elsewhere (a
forward) is relayed: those go into the spool, durably, before any reply, and the
mailet container's transport takes them to RemoteDelivery.

One reply for several destinations (:func:`combine`): ``250`` only if every one of
them was written (or queued); else a temporary failure of any part wins (the MTA
tries the whole recipient again: the parts already written may get a second copy,
never none); else the first permanent failure (the sender is told that not every
mailbox behind the address got the message). Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kittiwake.delivery.base import Outcome, Status, Target
from kittiwake.policy.names import InvalidName, canonical_domain
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable, expand

__all__ = ["Route", "combine", "route"]


@dataclass(slots=True)
class Route:
    """One accepted recipient: its local parts, its remote parts."""

    recipient: str
    #: one per final address in a local domain (mailbox None: no such user)
    targets: list[Target] = field(default_factory=list)
    #: final addresses elsewhere (forwards), relayed through the spool
    remote: list[str] = field(default_factory=list)
    #: its mappings loop now (the table changed since RCPT)
    loop: bool = False


def route(
    recipients: Sequence[str],
    table: RewriteTable,
    resolve: Callable[[str], str | None],
    is_local_domain: Callable[[str], bool],
) -> list[Route]:
    """Expand every recipient; local targets are numbered from 0 across all of them
    (their journal indexes).

    Args:
        resolve: final address -> canonical mailbox (None: none), without the table.
        is_local_domain: a canonical domain is ours.
    """
    routes = []
    n = 0
    for rcpt in recipients:
        r = Route(rcpt)
        routes.append(r)
        expansion = expand(rcpt, table or EMPTY_TABLE)
        if expansion.loop:
            r.loop = True
            continue
        for address in expansion.addresses:
            if _is_local(address, is_local_domain):
                r.targets.append(Target(n, address, resolve(address)))
                n += 1
            else:
                r.remote.append(address)
    return routes


def _is_local(address: str, is_local_domain: Callable[[str], bool]) -> bool:
    _local, at, domain = address.rpartition("@")
    if not at:
        return True  # a bare postmaster (RFC 5321 4.5.1)
    if domain.startswith("["):
        return False  # an address literal is never ours (no autodetectIP)
    try:
        return is_local_domain(canonical_domain(domain))
    except InvalidName:
        return False


def combine(recipient: str, parts: Sequence[Outcome], remote: Outcome | None = None) -> Outcome:
    """The one outcome of ``recipient`` from those of its parts (see the module doc)."""
    every = [*parts, *([remote] if remote is not None else [])]
    if not every:
        return Outcome(0, recipient, Status.FAILED, "5.1.1", detail="no destination")
    for status in (Status.DEFERRED, Status.FAILED):
        for o in every:
            if o.status is status:
                return Outcome(o.index, recipient, o.status, o.dsn, o.location, o.detail)
    locations = ",".join(dict.fromkeys(o.location for o in every if o.location))
    return Outcome(every[0].index, recipient, Status.SENT, "2.0.0", locations)
