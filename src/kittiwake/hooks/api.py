"""What a hook sees and implements.

A hook is an object with any of the ``on_*`` coroutine methods below; those it does
not define answer DECLINED. Hooks run in order (configured ones first, then
kittiwake's own); see ``result.py`` for what each answer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake.protocol import MailFrom, RcptTo

from .result import DECLINED, HookResult

__all__ = ["Hook", "SessionInfo"]


@dataclass(slots=True)
class SessionInfo:
    """One connection as hooks and policy see it. Kept up to date by the session."""

    listener: str
    protocol: str  # "SMTP" or "LMTP"
    client_ip: str
    client_port: int
    session_id: str
    helo: str | None = None
    esmtp: bool = False
    #: the SASL identity once AUTH succeeded (AUTH comes in a later issue)
    authenticated_user: str | None = None
    tls: bool = False
    #: the current transaction: None before MAIL is accepted; "" is the null sender
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    smtputf8: bool = False


class Hook:
    """Base class for hooks: every method declines."""

    async def on_connect(self, session: SessionInfo) -> HookResult:
        return DECLINED

    async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
        return DECLINED

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        return DECLINED

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        return DECLINED

    async def on_message(self, session: SessionInfo, message_path: str) -> HookResult:
        return DECLINED

    async def on_quit(self, session: SessionInfo) -> HookResult:
        return DECLINED

    async def on_unknown(self, session: SessionInfo, verb: str) -> HookResult:
        return DECLINED

    async def on_disconnect(self, session: SessionInfo) -> None:
        return None
