"""RCPT handlers: ValidRcptHandler, MaxRcptHandler, SpamTrapHandler."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.recipients import ROLE_ACCOUNTS
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable, expand
from kittiwake.protocol import RcptTo, Reply
from kittiwake.protocol import replies as R
from kittiwake.storage.base import DomainStore, SpamTrapStore, UserStore

from ..api import Hook, Services, SessionInfo
from ..options import HandlerOptions, OptionError
from ..result import DECLINED, DENY, HookResult

__all__ = ["MaxRcptHandler", "SpamTrapHandler", "ValidRcptHandler"]

#: James MaxRcptHandler's reply
MAX_RECIPIENTS = Reply(452, "4.5.3", "Requested action not taken: max recipients reached")
_RRT_CHECKS = ("mappingExists", "anyMappingValid", "allMappingsValid")
log = logging.getLogger("kittiwake.hooks")


class ValidRcptHandler(Hook):
    """James's ``fastfail.ValidRcptHandler``: a recipient in a local domain must be a
    user, or be rewritten by the recipient rewrite table; else ``550 5.1.1``.

    Kittiwake's own recipient rule refuses unknown users after every hook, whatever
    they answered, so this handler is its named form; its options can only make it
    stricter, as James reads them:

    * ``enableRecipientRewriteTable`` (true): false accepts users only, not aliases;
    * ``recipientRewriteTableCheck``: ``mappingExists`` (default: any mapping will do),
      ``anyMappingValid`` (one of the addresses it expands to must be a user here, or
      be outside the local domains), ``allMappingsValid`` (all of them must).

    Postmaster and abuse (RFC 5321 4.5.1, RFC 2142) are always valid.
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.rewrite_table = options.boolean("enableRecipientRewriteTable", True)
        self.rewrite_check = options.text("recipientRewriteTableCheck", "mappingExists")
        if self.rewrite_check not in _RRT_CHECKS:
            raise OptionError(
                "<recipientRewriteTableCheck>",
                f"{self.rewrite_check!r} is not one of {', '.join(_RRT_CHECKS)}",
            )
        self.domains: DomainStore | None = None
        self.users: UserStore | None = None
        self.table: Callable[[], RewriteTable] | None = None

    async def start(self, services: Services) -> None:
        self.domains, self.users = services.domains, services.users
        # the store that holds users holds the rewrite table too (storage.RewriteStore)
        self.table = getattr(services.users, "rewrite_table", None)

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if self.domains is None or self.users is None:
            return DECLINED
        local, at, domain = rcpt.address.rpartition("@")
        if not at:
            return DECLINED  # a bare <postmaster>
        try:
            domain = canonical_domain(domain)
        except InvalidName:
            return DECLINED  # not local: the relay rule decides
        table = self.table() if self.table is not None else EMPTY_TABLE
        if not (self.domains.contains_domain(domain) or table.is_alias_domain(domain)):
            return DECLINED
        key = f"{local.lower()}@{domain}"
        if local.lower() in ROLE_ACCOUNTS or self._valid(key):
            return DECLINED
        if not self.rewrite_table or not table.has_mapping(key):
            return HookResult.deny(R.NO_SUCH_USER)
        if self.rewrite_check == "mappingExists":
            return DECLINED
        expansion = expand(key, table)
        if expansion.loop:
            return DECLINED  # kittiwake's own rule refuses loops
        targets = [self._valid(address, remote_ok=True) for address in expansion.addresses]
        ok = any(targets) if self.rewrite_check == "anyMappingValid" else all(targets)
        return DECLINED if ok and targets else HookResult.deny(R.NO_SUCH_USER)

    def _valid(self, address: str, *, remote_ok: bool = False) -> bool:
        """A user here; with ``remote_ok``, also any address outside the local domains."""
        assert self.domains is not None and self.users is not None
        try:
            key = canonical_address(address)
        except InvalidName:
            return False
        if self.users.contains_user(key):
            return True
        local, _, domain = key.rpartition("@")
        if local in ROLE_ACCOUNTS and self.domains.contains_domain(domain):
            return True
        return remote_ok and not self.domains.contains_domain(domain)


class MaxRcptHandler(Hook):
    """James's ``fastfail.MaxRcptHandler``: more than ``maxRcpt`` recipients in one
    transaction get ``452 4.5.3``. ``maxRcpt`` is required (James reads a missing one
    as 0 and refuses every recipient; kittiwake stops the start instead)."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.max = options.integer("maxRcpt", low=1)

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if len(session.recipients) + 1 > self.max:
            return HookResult.deny(MAX_RECIPIENTS)
        return DECLINED


class SpamTrapHandler(Hook):
    """James's ``fastfail.SpamTrapHandler``: a client that writes to a trap address is
    refused (DENY, ``554 5.7.1``) for ``blockTime`` (milliseconds unless a unit is
    given; James's default 4320000 ms).

    Options: ``spamTrapRecip`` (one address each, repeated), ``blockTime``. Blocked
    addresses are kept in a :class:`~kittiwake.storage.base.SpamTrapStore`
    (``DATA/spamtrap.db`` by default), so every worker process refuses them (James keeps
    them in the memory of one handler).
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.traps = frozenset(a.lower() for a in options.texts("spamTrapRecip"))
        if not self.traps:
            raise OptionError("<spamTrapRecip>", "at least one trap address is required")
        self.block_time = options.duration("blockTime", 4320.0, unit="ms", low=0.001)
        self.clock = time.time
        self.scope = ""
        self.store: SpamTrapStore | None = None

    async def start(self, services: Services) -> None:
        self.scope = services.listener
        self.store = services.stores.spam_traps()

    async def stop(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if self.store is None:
            return DECLINED
        key = f"{self.scope}/{session.client_ip}"
        trap = rcpt.address.lower() in self.traps
        now = self.clock()
        until = now + self.block_time if trap else None
        if await self.store.check(key, now, until):
            if trap:
                log.info("%s: [%s] wrote to a spam trap", session.session_id, session.client_ip)
            return DENY
        return DECLINED
