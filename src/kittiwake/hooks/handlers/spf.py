"""SPFHandler: James's ``fastfail.SPFHandler``, on pyspf (RFC 7208).

The library is ``pyspf`` (module ``spf``), the SPF implementation behind the Postfix
and milter policy daemons (spf-engine), with dnspython for its lookups. pyspf is
synchronous, so each check runs in a worker thread; its lookups go through the same
resolvers as every other handler (``dnsservice.xml``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dns.exception
import dns.resolver
import spf  # type: ignore[import-untyped]

from kittiwake.dnsservice import DnsService
from kittiwake.protocol import MailFrom, Reply

from ..api import Hook, Message, Services, SessionInfo
from ..options import HandlerOptions
from ..result import DECLINED, HookResult

__all__ = ["SPFHandler"]

log = logging.getLogger("kittiwake.hooks")

#: James: temperror
SPF_TEMPFAIL = Reply(451, "4.4.3", "Temporarily rejected: Problem on SPF lookup")
_TEXT_MAX = 200


def _lookup_with(resolver: dns.resolver.Resolver) -> Any:
    """pyspf's DNSLookup, through ``resolver`` (pyspf's own uses the system's)."""

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        out: list[Any] = []
        try:
            answers = resolver.resolve(name, qtype, lifetime=timeout, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return out
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise spf.TempError(f"DNS {exc}") from None
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    return lookup


class SPFHandler(Hook):
    """Checks the sender's SPF record at MAIL FROM (the HELO name for the null
    sender). Clients allowed to relay (authenticated) are not checked, unless
    ``checkAuthNetworks`` is true.

    * ``fail``: ``554 5.7.1`` with the domain's explanation;
    * ``softfail``: the same when ``blockSoftFail`` is true (default false);
    * ``permerror``: the same when ``blockPermError`` is true (default true);
    * ``temperror``: ``451 4.4.3``;
    * otherwise accepted; a ``Received-SPF`` field (RFC 7208 9.1) is added at the top
      of the message (James keeps it in a mail attribute instead).
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.block_soft_fail = options.boolean("blockSoftFail", False)
        self.block_perm_error = options.boolean("blockPermError", True)
        self.check_auth_networks = options.boolean("checkAuthNetworks", False)
        self.hostname = "localhost"
        self.timeout = 20.0

    async def start(self, services: Services) -> None:
        self.hostname = services.hostname
        dns_service: DnsService = services.dns
        self.timeout = dns_service.config.timeout * 4
        # pyspf calls a module-level function for every lookup; point it at our servers
        # (one resolver configuration per process, so one function for every handler).
        spf.DNSLookup = _lookup_with(dns_service.sync_resolver)

    def _check(self, ip: str, sender: str, helo: str) -> tuple[str, str, str]:
        query = spf.query(ip, sender, helo, receiver=self.hostname, timeout=self.timeout)
        result, _code, explanation = query.check()
        header = query.get_header(result, self.hostname)
        return str(result), str(explanation), str(header)

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        if session.relaying_allowed and not self.check_auth_networks:
            return DECLINED
        helo = session.helo or ""
        try:
            result, explanation, header = await asyncio.to_thread(
                self._check, session.client_ip, mail.address, helo
            )
        except Exception as exc:  # pyspf raises on input it did not expect (UTF-8 ...)
            log.warning("%s: SPF check failed, taken as none: %r", session.session_id, exc)
            result, explanation, header = "none", "", ""
        log.info(
            "%s: SPF %s for [%s] from=<%s> helo=%s",
            session.session_id,
            result,
            session.client_ip,
            mail.address,
            helo,
        )
        key = (SPFHandler, id(self))
        session.state.pop(key, None)
        if (
            result == "fail"
            or (result == "softfail" and self.block_soft_fail)
            or (result == "permerror" and self.block_perm_error)
        ):
            text = "".join(ch for ch in explanation if 32 <= ord(ch) < 127)[:_TEXT_MAX]
            return HookResult.deny(Reply(554, "5.7.1", text or f"SPF {result}"))
        if result == "temperror":
            return HookResult.denysoft(SPF_TEMPFAIL)
        if header:
            session.state[key] = header
        return DECLINED

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        header = session.state.get((SPFHandler, id(self)))
        if header:  # pyspf gives the field's value: "Pass (receiver: ...) client-ip=..."
            message.add_header("Received-SPF", " ".join(header.split()))
        return DECLINED
