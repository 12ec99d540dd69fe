"""Handlers that ask DNS: DNSRBLHandler, ResolvableEhloHeloHandler,
ReverseEqualsEhloHeloHandler, ValidSenderDomainHandler.

Lookups go through the process's :class:`~kittiwake.dnsservice.DnsService`
(``dnsservice.xml``). The RBL lookup starts when the client connects and the HELO
checks when it greets, in the background, so their answers are usually there when
RCPT needs them. A lookup that gets no answer (timeout, SERVFAIL) refuses for now
(``451 4.4.3``) where the check would refuse, except for the RBL, where it counts as
"not listed" (as in James).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kittiwake.dnsservice import DnsService, DnsTempError, reverse_ip
from kittiwake.policy.names import InvalidName, canonical_domain
from kittiwake.policy.recipients import ROLE_ACCOUNTS
from kittiwake.protocol import MailFrom, RcptTo, Reply

from ..api import Hook, Services, SessionInfo
from ..options import HandlerOptions, OptionError
from ..result import DECLINED, HookResult

__all__ = [
    "DNSRBLHandler",
    "ResolvableEhloHeloHandler",
    "ReverseEqualsEhloHeloHandler",
    "ValidSenderDomainHandler",
]

log = logging.getLogger("kittiwake.hooks")

#: a DNS answer needed for a decision did not come
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporarily rejected: problem on DNS lookup, try again later")
_DETAIL_MAX = 200


def _printable(text: str) -> str:
    cleaned = "".join(ch for ch in text if 32 <= ord(ch) < 127).strip()
    return cleaned[:_DETAIL_MAX]


class _DnsHook(Hook):
    dns: DnsService

    async def start(self, services: Services) -> None:
        self.dns = services.dns

    def _background(
        self, session: SessionInfo, tag: object, make: Callable[[], Awaitable[Any]]
    ) -> asyncio.Future[Any]:
        """The lookup for ``tag`` in this session, started now if it is not running."""
        key = (type(self), id(self))
        tasks: dict[object, asyncio.Future[Any]] = session.state.setdefault(key, {})
        task = tasks.get(tag)
        if task is None:
            task = tasks[tag] = asyncio.ensure_future(make())
        return task

    async def on_disconnect(self, session: SessionInfo) -> None:
        tasks = session.state.pop((type(self), id(self)), {})
        for task in tasks.values():
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning


class DNSRBLHandler(_DnsHook):
    """James's ``fastfail.DNSRBLHandler``: a client listed in a DNS blocklist may write
    only to postmaster and abuse (RFC 5321 4.5.1, RFC 2142), unless it authenticated.

    The client's address is looked up in each ``<rblservers><whitelist>`` zone, then
    each ``<blacklist>`` zone (reversed octets or nibbles, RFC 5782); any A record
    means listed. Listed in a whitelist: never refused. Listed in a blacklist: RCPT
    gets ``554 5.7.1`` (with the zone's TXT record as the text when ``getDetail`` is
    true). As the James Javadoc describes it, postmaster and abuse stay reachable.
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        servers = options.child("rblservers")
        self.whitelist = servers.texts("whitelist") if servers else []
        self.blacklist = servers.texts("blacklist") if servers else []
        self.detail = options.boolean("getDetail", False)
        if not self.blacklist:
            raise OptionError("<rblservers>", "at least one <blacklist> zone is required")

    async def on_connect(self, session: SessionInfo) -> HookResult:
        self._background(session, "rbl", lambda: self._listing(session.client_ip))
        return DECLINED

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        if session.relaying_allowed:
            return DECLINED
        local = rcpt.address.rpartition("@")[0] or rcpt.address
        if local.lower() in ROLE_ACCOUNTS:
            return DECLINED
        listing: str | None = await self._background(
            session, "rbl", lambda: self._listing(session.client_ip)
        )
        if listing is None:
            return DECLINED
        return HookResult.deny(Reply(554, "5.7.1", listing))

    async def _listing(self, ip: str) -> str | None:
        """The refusal text if ``ip`` is blocklisted (and not whitelisted), else None."""
        try:
            reversed_ip = reverse_ip(ip)
        except ValueError:
            return None
        for zone in self.whitelist:
            if await self._listed(reversed_ip, zone):
                log.info("[%s] whitelisted by %s", ip, zone)
                return None
        for zone in self.blacklist:
            if await self._listed(reversed_ip, zone):
                log.info("[%s] listed by %s: restricted to postmaster and abuse", ip, zone)
                if self.detail:
                    try:
                        texts = await self.dns.txt(f"{reversed_ip}.{zone}")
                    except DnsTempError:
                        texts = []
                    detail = _printable(texts[0]) if texts else ""
                    if detail:
                        return detail
                return (
                    f"Rejected: unauthenticated e-mail from {ip} is restricted. "
                    "Contact the postmaster for details."
                )
        return None

    async def _listed(self, reversed_ip: str, zone: str) -> bool:
        try:
            return bool(await self.dns.a(f"{reversed_ip}.{zone}"))
        except DnsTempError as exc:
            log.warning("RBL lookup failed, taken as not listed: %s", exc)
            return False


def _literal(name: str) -> bool:
    """An address literal ``[192.0.2.1]`` / ``[IPv6:...]`` or a bare IP."""
    if name.startswith("[") and name.endswith("]"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _HeloCheck(_DnsHook):
    """Checks the HELO name when the client greets, refuses at RCPT (as James)."""

    async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
        self._background(session, name, lambda: self._bad(session, name))
        return DECLINED

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        helo = session.helo
        if helo is None or session.relaying_allowed:
            return DECLINED
        try:
            reply = await self._background(session, helo, lambda: self._bad(session, helo))
        except DnsTempError as exc:
            log.warning("%s: HELO check without an answer: %s", session.session_id, exc)
            return HookResult.denysoft(DNS_TEMPFAIL)
        return DECLINED if reply is None else HookResult.deny(reply)

    async def _bad(self, session: SessionInfo, name: str) -> Reply | None:
        raise NotImplementedError


class ResolvableEhloHeloHandler(_HeloCheck):
    """James's ``fastfail.ResolvableEhloHeloHandler``: a HELO/EHLO name that does not
    resolve to an address gets ``501 5.5.4`` at RCPT. Address literals pass; clients
    allowed to relay (authenticated) are not checked."""

    async def _bad(self, session: SessionInfo, name: str) -> Reply | None:
        if _literal(name):
            return None
        if await self.dns.addresses(name.rstrip(".")):
            return None
        return Reply(501, "5.5.4", f"Provided EHLO/HELO {name} can not be resolved")


class ReverseEqualsEhloHeloHandler(_HeloCheck):
    """James's ``fastfail.ReverseEqualsEhloHeloHandler``: the HELO/EHLO name must be a
    reverse DNS name of the client's address (any of its PTR records, any case), else
    ``501 5.5.4`` at RCPT."""

    async def _bad(self, session: SessionInfo, name: str) -> Reply | None:
        names = {n.lower() for n in await self.dns.ptr(session.client_ip)}
        if name.rstrip(".").lower() in names:
            return None
        return Reply(
            501,
            "5.5.4",
            f"Provided EHLO/HELO {name} is not the reverse DNS name of {session.client_ip}",
        )


class ValidSenderDomainHandler(_DnsHook):
    """James's ``fastfail.ValidSenderDomainHandler``: MAIL FROM a domain that cannot
    receive mail gets ``501 5.1.7``: no MX and no address (RFC 5321 5.1's implicit MX),
    or only a null MX (RFC 7505). The null sender, address-literal domains and clients
    allowed to relay are not checked."""

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        sender = mail.address
        if not sender or session.relaying_allowed:
            return DECLINED
        domain = sender.rpartition("@")[2].rstrip(".")
        if not domain or _literal(domain):
            return DECLINED
        try:
            valid = await self._can_receive(domain)
        except DnsTempError as exc:
            log.warning("%s: sender domain check without an answer: %s", session.session_id, exc)
            return HookResult.denysoft(DNS_TEMPFAIL)
        if valid:
            return DECLINED
        return HookResult.deny(
            Reply(501, "5.1.7", f"Sender <{sender}> contains a domain with no valid MX records")
        )

    async def _can_receive(self, domain: str) -> bool:
        try:
            ascii_domain = canonical_domain(domain)
        except InvalidName:
            return False
        records = await self.dns.mx(ascii_domain)
        if records:
            return any(exchange not in ("", ".") for _, exchange in records)
        return bool(await self.dns.addresses(ascii_domain))
