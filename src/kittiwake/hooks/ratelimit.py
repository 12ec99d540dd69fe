"""RateLimitHandler: how fast one client (or one account) may connect and send.

The limits administrators of peer servers ask for most (Postfix's anvil:
``smtpd_client_connection_rate_limit``, ``..._message_rate_limit``,
``..._recipient_rate_limit``)::

    <handler class="RateLimitHandler">
      <connectionsPerMinute>60</connectionsPerMinute>       <!-- per client address -->
      <messagesPerHour>200</messagesPerHour>                <!-- per client address -->
      <recipientsPerHour>1000</recipientsPerHour>           <!-- per client address -->
      <messagesPerHourPerUser>500</messagesPerHourPerUser>  <!-- per authenticated user -->
      <recipientsPerHourPerUser>2000</recipientsPerHourPerUser>
      <whitelistedNetworks>127.0.0.0/8, 10.0.0.0/8</whitelistedNetworks>
    </handler>

Each limit is optional (absent: no limit). A client address is the IPv4 address, or
the /64 of an IPv6 address. Each listener counts apart (port 25 and port 587 may have
different limits). Over a limit: a connection gets ``421 4.7.0`` and is
closed; a MAIL FROM (a message) or a RCPT TO gets ``450 4.7.1`` (try again later).
What is refused is not counted, so a client that waits gets in again.

Counting holds across worker processes: the counters live in a
:class:`~kittiwake.storage.base.RateLimitStore` (``DATA/ratelimit.db`` by default).
Each limit is a sliding window estimated from two fixed windows (the current one, and
the previous one weighted by how much of it still falls in the window;
:mod:`kittiwake.policy.ratelimit`): one small transaction per check, no per-event rows.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from kittiwake.policy.ratelimit import WindowLimit
from kittiwake.protocol import MailFrom, RcptTo, Reply
from kittiwake.storage.base import RateLimitStore

from .api import Hook, Services, SessionInfo
from .options import HandlerOptions
from .result import DECLINED, HookResult

__all__ = ["RateLimitHandler", "SlidingWindow", "client_key"]

_log = logging.getLogger("kittiwake.hooks")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try later")
TOO_MANY_MESSAGES = Reply(450, "4.7.1", "Too many messages, try again later")
TOO_MANY_RECIPIENTS = Reply(450, "4.7.1", "Too many recipients, try again later")


def client_key(ip: str) -> str:
    """The address a limit counts: IPv4 as it is, IPv6 by its /64."""
    address = ipaddress.ip_address(ip)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class SlidingWindow:
    """One limit: at most ``limit`` events per ``period`` seconds for each key."""

    def __init__(self, name: str, limit: int, period: float, scope: str = "") -> None:
        self.name = name
        self.limit = limit
        self.period = period
        #: what the counts are kept apart by (the listener's name)
        self.scope = scope

    def limit_for(self, key: str) -> WindowLimit:
        """This limit for one client address or user."""
        full_key = f"{self.name}:{key}" if not self.scope else f"{self.scope}/{self.name}:{key}"
        return WindowLimit(full_key, self.limit, self.period)


class RateLimitHandler(Hook):
    """See the module documentation."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)

        def limit(name: str, period: float) -> SlidingWindow | None:
            value = options.integer(name, 0, low=0)
            return SlidingWindow(name, value, period) if value else None

        self.connections = limit("connectionsPerMinute", 60.0)
        self.messages = limit("messagesPerHour", 3600.0)
        self.recipients = limit("recipientsPerHour", 3600.0)
        self.user_messages = limit("messagesPerHourPerUser", 3600.0)
        self.user_recipients = limit("recipientsPerHourPerUser", 3600.0)
        self.networks = options.networks("whitelistedNetworks")
        self.clock = time.time
        self.store: RateLimitStore | None = None

    async def start(self, services: Services) -> None:
        for window in self._windows():
            window.scope = services.listener
        self.store = services.stores.rate_limits()

    def _windows(self) -> list[SlidingWindow]:
        windows = (
            self.connections,
            self.messages,
            self.recipients,
            self.user_messages,
            self.user_recipients,
        )
        return [w for w in windows if w is not None]

    async def stop(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _exempt(self, session: SessionInfo) -> bool:
        if not self.networks:
            return False
        address = ipaddress.ip_address(session.client_ip)
        return any(address in net for net in self.networks)

    async def _take(self, session: SessionInfo, *limits: tuple[SlidingWindow | None, str]) -> bool:
        """Count the event against every limit given, all or none; False if one is over."""
        wanted = [(w, key) for w, key in limits if w is not None]
        if not wanted or self.store is None or self._exempt(session):
            return True
        counted = [w.limit_for(key) for w, key in wanted]
        over = await self.store.take(counted, self.clock())
        if over is None:
            return True
        # nothing of this event was counted
        name = next(w.name for (w, _), c in zip(wanted, counted, strict=True) if c == over)
        who = session.authenticated_user or session.client_ip
        _log.info("%s: rate limit %s reached for %s", session.session_id, name, who)
        return False

    async def on_connect(self, session: SessionInfo) -> HookResult:
        if await self._take(session, (self.connections, client_key(session.client_ip))):
            return DECLINED
        return HookResult.denysoft(TOO_MANY_CONNECTIONS, disconnect=True)

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        user = session.authenticated_user
        if await self._take(
            session,
            (self.messages, client_key(session.client_ip)),
            (self.user_messages if user else None, user or ""),
        ):
            return DECLINED
        return HookResult.denysoft(TOO_MANY_MESSAGES)

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        user = session.authenticated_user
        if await self._take(
            session,
            (self.recipients, client_key(session.client_ip)),
            (self.user_recipients if user else None, user or ""),
        ):
            return DECLINED
        return HookResult.denysoft(TOO_MANY_RECIPIENTS)
