"""Greylisting: James's ``fastfail.JDBCGreylistHandler``, stored in ``DATA/greylist.db``.

A triplet is (client network, sender, recipient): the client's /24 for IPv4, /64 for
IPv6 (a sender's pool of outgoing servers retries from a neighbour), the envelope
sender ("" for the null sender) and the recipient, both lower-cased.

* A new triplet is refused for now and remembered.
* A retry before ``tempBlockTime`` is refused again.
* A retry after it is accepted, and the triplet is whitelisted: from then on it is
  accepted at once, as long as it is seen within ``autoWhiteListLifeTime`` of the last
  time.
* A triplet never retried is forgotten after ``unseenLifeTime``.

Options (James's): ``tempBlockTime`` (1 hour), ``autoWhiteListLifeTime`` (36 days),
``unseenLifeTime`` (4 hours), ``whitelistedNetworks`` (never greylisted). A plain
number is milliseconds. James's ``repositoryPath`` and ``sqlFile`` name its JDBC
store; kittiwake's store is the SQLite file above, shared by every worker process.
Clients allowed to relay (authenticated) are not greylisted.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import sqlite3
import time

from kittiwake.protocol import RcptTo, Reply

from .._db import HookDb
from ..api import Hook, Services, SessionInfo
from ..options import HandlerOptions
from ..result import DECLINED, HookResult

__all__ = ["GreylistHandler", "client_network"]

log = logging.getLogger("kittiwake.hooks")

GREYLISTED = Reply(451, "4.7.1", "Temporarily rejected: please try again later")
TOO_SOON = Reply(451, "4.7.1", "Temporarily rejected: reconnected too fast, try again later")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS greylist ("
    " network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
    " first_seen REAL NOT NULL, last_seen REAL NOT NULL, passed INTEGER NOT NULL,"
    " PRIMARY KEY (network, sender, recipient)) WITHOUT ROWID",
)


def client_network(ip: str) -> str:
    """``192.0.2.7`` -> ``192.0.2.0/24``; IPv6 -> its /64."""
    address = ipaddress.ip_address(ip)
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class GreylistHandler(Hook):
    """See the module documentation."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.temp_block = options.duration("tempBlockTime", 3600.0)
        self.whitelist_life = options.duration("autoWhiteListLifeTime", 36 * 86400.0)
        self.unseen_life = options.duration("unseenLifeTime", 4 * 3600.0)
        self.networks = options.networks("whitelistedNetworks")
        self.clock = time.time
        self.db: HookDb | None = None

    async def start(self, services: Services) -> None:
        self.db = HookDb(services.data_dir / "greylist.db", _SCHEMA)

    async def stop(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if session.relaying_allowed or self.db is None:
            return DECLINED
        ip = ipaddress.ip_address(session.client_ip)
        if any(ip in net for net in self.networks):
            return DECLINED
        triplet = (
            client_network(session.client_ip),
            (session.sender or "").lower(),
            rcpt.address.lower(),
        )
        now = self.clock()
        verdict = await self.db.run(lambda conn: self._check(conn, triplet, now))
        if verdict is not None:
            log.info(
                "%s: greylisted [%s] from=<%s> to=<%s>",
                session.session_id,
                session.client_ip,
                session.sender,
                rcpt.address,
            )
            return HookResult.denysoft(verdict)
        return DECLINED

    def _check(
        self, conn: sqlite3.Connection, triplet: tuple[str, str, str], now: float
    ) -> Reply | None:
        row = conn.execute(
            "SELECT first_seen, last_seen, passed FROM greylist"
            " WHERE network = ? AND sender = ? AND recipient = ?",
            triplet,
        ).fetchone()
        if random.random() < 0.01:
            self._cleanup(conn, now)
        if row is not None:
            first_seen, last_seen, passed = row
            expired = (
                now - last_seen > self.whitelist_life
                if passed
                else now - first_seen > self.unseen_life
            )
            if not expired:
                if not passed and now < first_seen + self.temp_block:
                    return TOO_SOON
                conn.execute(
                    "UPDATE greylist SET last_seen = ?, passed = passed + 1"
                    " WHERE network = ? AND sender = ? AND recipient = ?",
                    (now, *triplet),
                )
                return None
        conn.execute(
            "INSERT OR REPLACE INTO greylist VALUES (?, ?, ?, ?, ?, 0)", (*triplet, now, now)
        )
        return GREYLISTED

    def _cleanup(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute(
            "DELETE FROM greylist WHERE (passed = 0 AND first_seen < ?) OR last_seen < ?",
            (now - self.unseen_life, now - self.whitelist_life),
        )
