"""Greylisting: James's ``fastfail.JDBCGreylistHandler``, in a
:class:`~kittiwake.storage.base.GreylistStore` (``DATA/greylist.db`` by default).

A triplet is (client network, sender, recipient): the client's /24 for IPv4, /64 for
IPv6 (a sender's pool of outgoing servers retries from a neighbour), the envelope
sender ("" for the null sender) and the recipient, both lower-cased.

* A new triplet is refused for now and remembered.
* A retry before ``tempBlockTime`` is refused again.
* A retry after it is accepted, and the triplet is whitelisted: from then on it is
  accepted at once, as long as it is seen within ``autoWhiteListLifeTime`` of the last
  time.
* A triplet never retried is forgotten after ``unseenLifeTime``.

(The rule itself: :func:`kittiwake.policy.greylist.greylist_step`.)

Options (James's): ``tempBlockTime`` (1 hour), ``autoWhiteListLifeTime`` (36 days),
``unseenLifeTime`` (4 hours), ``whitelistedNetworks`` (never greylisted). A plain
number is milliseconds. James's ``repositoryPath`` and ``sqlFile`` name its JDBC
store; kittiwake's is the store above, shared by every worker process.
Clients allowed to relay (authenticated) are not greylisted.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from kittiwake.policy.greylist import GreylistTimes, GreylistVerdict, Triplet
from kittiwake.protocol import RcptTo, Reply
from kittiwake.storage.base import GreylistStore

from ..api import Hook, Services, SessionInfo
from ..options import HandlerOptions
from ..result import DECLINED, HookResult

__all__ = ["GreylistHandler", "client_network"]

log = logging.getLogger("kittiwake.hooks")

GREYLISTED = Reply(451, "4.7.1", "Temporarily rejected: please try again later")
TOO_SOON = Reply(451, "4.7.1", "Temporarily rejected: reconnected too fast, try again later")
_REPLIES = {GreylistVerdict.GREYLISTED: GREYLISTED, GreylistVerdict.TOO_SOON: TOO_SOON}


def client_network(ip: str) -> str:
    """``192.0.2.7`` -> ``192.0.2.0/24``; IPv6 -> its /64."""
    address = ipaddress.ip_address(ip)
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class GreylistHandler(Hook):
    """See the module documentation."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.times = GreylistTimes(
            temp_block=options.duration("tempBlockTime", 3600.0),
            whitelist_life=options.duration("autoWhiteListLifeTime", 36 * 86400.0),
            unseen_life=options.duration("unseenLifeTime", 4 * 3600.0),
        )
        self.networks = options.networks("whitelistedNetworks")
        self.clock = time.time
        self.store: GreylistStore | None = None

    async def start(self, services: Services) -> None:
        self.store = services.stores.greylist()

    async def stop(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if session.relaying_allowed or self.store is None:
            return DECLINED
        ip = ipaddress.ip_address(session.client_ip)
        if any(ip in net for net in self.networks):
            return DECLINED
        triplet = Triplet(
            client_network(session.client_ip),
            (session.sender or "").lower(),
            rcpt.address.lower(),
        )
        verdict = await self.store.check(triplet, self.clock(), self.times)
        refusal = _REPLIES.get(verdict)
        if refusal is not None:
            log.info(
                "%s: greylisted [%s] from=<%s> to=<%s>",
                session.session_id,
                session.client_ip,
                session.sender,
                rcpt.address,
            )
            return HookResult.denysoft(refusal)
        return DECLINED
