"""AllowedUnauthenticatedSender: James's ``fastfail.AllowedUnauthenticatedSender``."""

from __future__ import annotations

import ipaddress

from kittiwake.policy.names import InvalidName, canonical_address
from kittiwake.protocol import MailFrom, Reply

from ..api import Hook, SessionInfo
from ..options import HandlerOptions, OptionError, parse_networks
from ..result import DECLINED, HookResult

__all__ = ["AllowedUnauthenticatedSender"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedUnauthenticatedSender(Hook):
    """Which senders a client may use when it is allowed to relay because of its
    address (``authorizedAddresses``: printers, scanners, applications) rather than
    because it authenticated.

    Options::

        <allowNullSender>false</allowNullSender>
        <allowedSenders>
          <allowedSender>printer@example.com</allowedSender>
          <allowedSender fromIps="192.168.1.0/24,10.0.0.1/32">scanner@example.com</allowedSender>
        </allowedSenders>

    An entry without ``fromIps`` is allowed from any trusted address. Any other sender
    gets ``550 5.7.1``. Authenticated sessions, and sessions not allowed to relay, are
    not affected.
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.allow_null = options.boolean("allowNullSender", False)
        self.allowed: list[tuple[str, list[_Network] | None]] = []
        senders = options.child("allowedSenders")
        for entry in senders.children("allowedSender") if senders else []:
            where = entry.path
            try:
                address = canonical_address(entry.text_value)
            except InvalidName:
                raise OptionError(where, f"{entry.text_value!r} is not an address") from None
            ips = entry.attribute("fromIps")
            try:
                networks = parse_networks(ips) if ips is not None else None
            except ValueError as exc:
                raise OptionError(f"{where}/@fromIps", str(exc)) from None
            self.allowed.append((address, networks))
        if not self.allowed:
            raise OptionError("<allowedSenders>", "at least one <allowedSender> is required")

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        if not session.trusted_network or session.authenticated_user is not None:
            return DECLINED
        ip = session.client_ip
        if not mail.address:
            if self.allow_null:
                return DECLINED
            return HookResult.deny(
                Reply(
                    550,
                    "5.7.1",
                    f"Sender <> is not allowed for unauthenticated connection from {ip}",
                )
            )
        try:
            sender = canonical_address(mail.address)
        except InvalidName:
            sender = mail.address.lower()
        address = ipaddress.ip_address(ip)
        for allowed, networks in self.allowed:
            if allowed == sender and (networks is None or any(address in n for n in networks)):
                return DECLINED
        return HookResult.deny(
            Reply(
                550,
                "5.7.1",
                f"Sender <{mail.address}> is not allowed for unauthenticated connection from {ip}",
            )
        )
