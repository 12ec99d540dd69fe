"""The application side of one connection: turns the core's decisions into replies.

Each decision goes through the hook chain (configured hooks first, then kittiwake's
own) and then through the mandatory policy rules, which no hook's OK can skip.
Message text streams into a spool entry; ``250`` is sent only after the entry is
fsynced (``Spool.commit``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from kittiwake.hooks.api import Hook, SessionInfo
from kittiwake.hooks.result import Action, HookResult
from kittiwake.policy.recipients import rcpt_reply
from kittiwake.protocol import (
    DataRequested,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    Quit,
    RcptTo,
    Reply,
    Reset,
    Unknown,
)
from kittiwake.protocol import replies as R
from kittiwake.queue.spool import Envelope, Spool, SpoolWriter
from kittiwake.storage.base import DomainStore, UserStore

from .recipients import recipient_facts

__all__ = ["Session", "SessionContext"]

log = logging.getLogger("kittiwake.smtp")
maillog = logging.getLogger("kittiwake.mail")


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session of one listener shares."""

    hostname: str
    protocol: str  # "SMTP" or "LMTP"
    domains: DomainStore
    users: UserStore
    spool: Spool
    hooks: Sequence[Hook]
    wake_delivery: Callable[[], None]  # a new spool entry exists


class Session:
    """Decides for one connection. Created by the listener, driven by its events."""

    def __init__(self, ctx: SessionContext, info: SessionInfo) -> None:
        self.ctx = ctx
        self.info = info
        self._writer: SpoolWriter | None = None
        self._mail: MailFrom | None = None
        self._failed: OSError | None = None  # spool write failed during this message
        self.messages = 0  # accepted, for the connection's log line
        self.recipients = 0

    # ---- decisions ----------------------------------------------------------------

    async def decide(self, event: Event) -> Reply | list[Reply]:
        """The reply to a decision event."""
        if isinstance(event, RcptTo):
            return await self._rcpt(event)
        if isinstance(event, MailFrom):
            return await self._mail_from(event)
        if isinstance(event, DataRequested):
            return self._begin_message()
        if isinstance(event, MessageComplete):
            return await self._end_message(event)
        if isinstance(event, Hello):
            return await self._hello(event)
        if isinstance(event, Quit):
            result = await self._run_hooks("on_quit")
            return result.refusal() if result.action is Action.DENY else _bye(self.ctx)
        if isinstance(event, Unknown):
            result = await self._run_hooks("on_unknown", event.verb)
            if result.action in (Action.DENY, Action.DENYSOFT):
                return result.refusal()
            return R.UNRECOGNIZED
        raise AssertionError(f"unexpected decision {event!r}")

    def notice(self, event: Event) -> None:
        """Events the core already answered."""
        if isinstance(event, MessageData):
            if self._writer is not None:
                self._write(event.data)
        elif isinstance(event, (MessageAborted, Reset)):
            self._abort_message()

    async def _hello(self, event: Hello) -> Reply:
        result = await self._run_hooks("on_helo", event.name)
        if result.action in (Action.DENY, Action.DENYSOFT):
            return result.refusal()
        self._abort_message()
        self._mail = None
        info = self.info
        info.helo, info.esmtp = event.name, event.extended
        info.sender, info.recipients = None, []
        return Reply(250, "", f"{self.ctx.hostname} Hello {event.name} [{info.client_ip}]")

    async def _mail_from(self, event: MailFrom) -> Reply:
        result = await self._run_hooks("on_mail", event)
        if result.action in (Action.DENY, Action.DENYSOFT):
            return result.refusal()
        self._mail = event
        self.info.sender = event.address
        self.info.recipients = []
        self.info.smtputf8 = event.smtputf8
        return R.SENDER_OK

    async def _rcpt(self, event: RcptTo) -> Reply:
        result = await self._run_hooks("on_rcpt", event)
        if result.action in (Action.DENY, Action.DENYSOFT):
            return result.refusal()
        # Mandatory rules: run whatever the hooks answered (OK included).
        facts = recipient_facts(event.address, self.ctx.domains, self.ctx.users)
        refusal = rcpt_reply(facts)
        if refusal is not None:
            log.info(
                "%s: reject RCPT from [%s]: %s; from=<%s> to=<%s>",
                self.info.session_id,
                self.info.client_ip,
                refusal,
                self.info.sender,
                event.address,
            )
            return refusal
        self.info.recipients.append(event.address)
        return R.RECIPIENT_OK

    # ---- message ------------------------------------------------------------------

    def _begin_message(self) -> Reply:
        self._abort_message()
        self._failed = None
        try:
            writer = self.ctx.spool.begin()
            self._writer = writer
            writer.write(self._trace_headers(writer.queue_id))
        except OSError as exc:
            self._abort_message()
            return _storage_reply(exc)
        return R.START_DATA

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        try:
            self._writer.write(data)
        except OSError as exc:
            # Keep reading the client's text; the reply comes at the end of DATA.
            self._failed = exc
            self._abort_message()

    async def _end_message(self, event: MessageComplete) -> Reply | list[Reply]:
        writer = self._writer
        n = len(self.info.recipients)
        if writer is None:
            exc = self._failed
            reply = _storage_reply(exc) if exc is not None else R.LOCAL_ERROR
            return self._per_recipient(reply, n)
        # A small message is still in memory; give hooks a file only when there are hooks.
        result = (
            await self._run_hooks("on_message", writer.ensure_file())
            if self.ctx.hooks
            else _DECLINED
        )
        if result.action in (Action.DENY, Action.DENYSOFT):
            self._abort_message()
            return self._per_recipient(result.refusal(), n)
        info = self.info
        envelope = Envelope(
            queue_id=writer.queue_id,
            sender=info.sender or "",
            recipients=tuple(info.recipients),
            client_address=info.client_ip,
            helo=info.helo or "",
            protocol=self._with_protocol(),
            received_at=time.time(),
            size=writer.size,
        )
        try:
            await writer.commit(envelope)
        except OSError as exc:
            self._abort_message()
            return self._per_recipient(_storage_reply(exc), n)
        self._writer = None
        self.messages += 1
        self.recipients += n
        maillog.info(
            "%s: accepted from=<%s>, client=[%s]:%d, size=%d, nrcpt=%d, listener=%s",
            writer.queue_id,
            info.sender,
            info.client_ip,
            info.client_port,
            event.size,
            n,
            info.listener,
        )
        self.ctx.wake_delivery()
        reply = Reply(250, "2.0.0", f"Ok: queued as {writer.queue_id}")
        if self.ctx.protocol == "LMTP":
            return [
                Reply(250, "2.0.0", f"<{r}> Ok: queued as {writer.queue_id}")
                for r in info.recipients
            ]
        return reply

    def _per_recipient(self, reply: Reply, n: int) -> Reply | list[Reply]:
        return [reply] * n if self.ctx.protocol == "LMTP" else reply

    def _abort_message(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def close(self) -> None:
        """The connection ended: give up any message being received."""
        self._abort_message()

    def _with_protocol(self) -> str:
        """The Received header's with-clause (RFC 5321 4.4, RFC 3848, RFC 6531 3.7.3)."""
        if self.ctx.protocol == "LMTP":
            return "UTF8LMTP" if self.info.smtputf8 else "LMTP"
        if self.info.smtputf8:
            return "UTF8SMTP"
        return "ESMTP" if self.info.esmtp else "SMTP"

    def _trace_headers(self, queue_id: str) -> bytes:
        info = self.info
        rcpts = info.recipients
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        date = format_datetime(datetime.now(UTC))
        text = (
            f"Return-Path: <{info.sender or ''}>\r\n"
            f"Received: from {info.helo or 'unknown'} ([{info.client_ip}])\r\n"
            f"\tby {self.ctx.hostname} (kittiwake) with {self._with_protocol()} id {queue_id}"
            f"{for_clause};\r\n\t{date}\r\n"
        )
        return text.encode("utf-8")

    # ---- hooks --------------------------------------------------------------------

    async def _run_hooks(self, method: str, *args: object) -> HookResult:
        """Ask the hooks in order; the first answer other than DECLINED wins."""
        for hook in self.ctx.hooks:
            result: HookResult = await getattr(hook, method)(self.info, *args)
            if result.action is not Action.DECLINED:
                return result
        return _DECLINED


_DECLINED = HookResult(Action.DECLINED)


def _bye(ctx: SessionContext) -> Reply:
    return Reply(221, "2.0.0", f"{ctx.hostname} closing connection")


def _storage_reply(exc: OSError) -> Reply:
    """Disk full (or quota) is 452 4.3.1 (RFC 3463); other I/O errors 451 4.3.0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return R.INSUFFICIENT_STORAGE
    log.error("spool write failed: %s", exc)
    return R.LOCAL_ERROR
