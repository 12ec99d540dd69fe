"""RCPT handlers: ValidRcptHandler, MaxRcptHandler, SpamTrapHandler."""

from __future__ import annotations

import logging
import random
import sqlite3
import time

from kittiwake.protocol import RcptTo, Reply

from .._db import HookDb
from ..api import Hook, Services, SessionInfo
from ..options import HandlerOptions, OptionError
from ..result import DECLINED, DENY, HookResult

__all__ = ["MaxRcptHandler", "SpamTrapHandler", "ValidRcptHandler"]

#: James MaxRcptHandler's reply
MAX_RECIPIENTS = Reply(452, "4.5.3", "Requested action not taken: max recipients reached")
_RRT_CHECKS = ("mappingExists", "anyMappingValid", "allMappingsValid")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blocked (client TEXT PRIMARY KEY NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
)
log = logging.getLogger("kittiwake.hooks")


class ValidRcptHandler(Hook):
    """James's ``fastfail.ValidRcptHandler``: unknown users of local domains get
    ``550 5.1.1``.

    Kittiwake's core rule already does this after every hook, whatever they answered
    (it cannot be switched off), so this handler is its named form and adds no check.
    Its options are read and checked as James reads them:

    * ``enableRecipientRewriteTable`` (true): also accept a recipient the rewrite table
      maps;
    * ``recipientRewriteTableCheck`` (``mappingExists``, ``anyMappingValid``,
      ``allMappingsValid``).

    Kittiwake has no recipient rewrite table yet: no mapping exists, so every mode
    accepts exactly the users (and postmaster/abuse).
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

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        return DECLINED  # the core rule decides (policy/recipients.py)


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
    addresses are kept in ``DATA/spamtrap.db``, so every worker process refuses them
    (James keeps them in the memory of one handler).
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.traps = frozenset(a.lower() for a in options.texts("spamTrapRecip"))
        if not self.traps:
            raise OptionError("<spamTrapRecip>", "at least one trap address is required")
        self.block_time = options.duration("blockTime", 4320.0, unit="ms", low=0.001)
        self.clock = time.time
        self.scope = ""
        self.db: HookDb | None = None

    async def start(self, services: Services) -> None:
        self.scope = services.listener
        self.db = HookDb(services.data_dir / "spamtrap.db", _SCHEMA)

    async def stop(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if self.db is None:
            return DECLINED
        key = f"{self.scope}/{session.client_ip}"
        trap = rcpt.address.lower() in self.traps
        now = self.clock()
        until = now + self.block_time

        def check(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT until FROM blocked WHERE client = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return True
            if trap:
                conn.execute("INSERT OR REPLACE INTO blocked VALUES (?, ?)", (key, until))
                if random.random() < 0.01:
                    conn.execute("DELETE FROM blocked WHERE until < ?", (now,))
                return True
            return False

        if await self.db.run(check):
            if trap:
                log.info("%s: [%s] wrote to a spam trap", session.session_id, session.client_ip)
            return DENY
        return DECLINED
