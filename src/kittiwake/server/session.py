"""The application side of one connection: turns the core's decisions into replies.

Each decision goes through the hook chain (``hooks/chain.py``: configured hooks first,
then kittiwake's own) and then through the mandatory policy rules, which no hook's OK
can skip. A hook's ``disconnect`` sets :attr:`Session.disconnect`; the listener closes
the connection after sending the reply.
Message text streams into a spool entry; ``250`` is sent only after the entry is
fsynced (``Spool.commit``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from kittiwake.hooks.api import HEADER_LIMIT, Message, SessionInfo, split_header
from kittiwake.hooks.chain import Chain
from kittiwake.hooks.result import CONNECT_FAILED, HOOK_FAILED, HookResult
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
    StartTLS,
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
    hooks: Chain
    wake_delivery: Callable[[], None]  # a new spool entry exists
    #: ``<auth><required>``: MAIL refused (530 5.7.0) unless the client authenticated
    auth_required: bool = False


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
        #: a hook asked to close the connection after the reply being decided
        self.disconnect = False
        # the client's header section, captured for message hooks (None: not capturing)
        self._header: bytearray | None = None
        self._header_done = False
        self._trace_size = 0

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
            return result.refusal() if result.refused else _bye(self.ctx)
        if isinstance(event, Unknown):
            result = await self._run_hooks("on_unknown", event.verb)
            if result.refused:
                return result.refusal()
            return R.UNRECOGNIZED
        if isinstance(event, StartTLS):
            return self._starttls()
        raise AssertionError(f"unexpected decision {event!r}")

    async def start(self) -> Reply | None:
        """Run the connect hooks. None: send the greeting; else the reply to send
        before closing (a refusal; a hook that failed gets ``421 4.3.0``)."""
        result = await self._run_hooks("on_connect")
        if not result.refused:
            return None
        self.disconnect = True
        if result is HOOK_FAILED:  # 421, the code that closes
            return CONNECT_FAILED
        return result.refusal()

    async def end(self) -> None:
        """The connection ended: tell the hooks (``on_disconnect``); never raises."""
        await self.ctx.hooks.disconnected(self.info)

    async def auth_result(self, mechanism: str, user: str | None, success: bool) -> Reply | None:
        """The AUTH command's call site (AUTH comes in a later issue): after the SASL
        exchange, before answering it.

        Returns:
            None to let the exchange's own answer stand (235 on success, 535 on
            failure); else a hook's refusal to send instead, and the client is then not
            authenticated. A hook can refuse a success; nothing turns a failure into a
            success.
        """
        result = await self._run_hooks("on_auth", mechanism, user, success)
        return result.refusal() if result.refused else None

    def notice(self, event: Event) -> None:
        """Events the core already answered."""
        if isinstance(event, MessageData):
            if self._writer is not None:
                self._write(event.data)
        elif isinstance(event, (MessageAborted, Reset)):
            self._abort_message()

    def _starttls(self) -> Reply:
        """STARTTLS, which the core offers only on a listener with a certificate."""
        if self.info.authenticated_user is not None:
            return R.STARTTLS_AFTER_AUTH  # RFC 3207 4.2; the core checks it too
        return R.READY_TLS

    def tls_started(self, version: str | None, cipher: str | None, bits: int) -> None:
        """The STARTTLS handshake finished: forget everything the client said in clear
        text (RFC 3207 4.2), as the core does, and note the cipher."""
        self._abort_message()
        self._mail = None
        info = self.info
        info.helo, info.esmtp, info.authenticated_user = None, False, None
        info.sender, info.recipients, info.smtputf8 = None, [], False
        self.encrypted(version, cipher, bits)

    def encrypted(self, version: str | None, cipher: str | None, bits: int) -> None:
        """The connection is encrypted (implicit TLS from the start, or after STARTTLS)."""
        info = self.info
        info.tls, info.tls_version, info.tls_cipher, info.tls_bits = True, version, cipher, bits

    async def _hello(self, event: Hello) -> Reply:
        result = await self._run_hooks("on_helo", event.name)
        if result.refused:
            return result.refusal()
        self._abort_message()
        self._mail = None
        info = self.info
        info.helo, info.esmtp = event.name, event.extended
        info.sender, info.recipients = None, []
        return Reply(250, "", f"{self.ctx.hostname} Hello {event.name} [{info.client_ip}]")

    async def _mail_from(self, event: MailFrom) -> Reply:
        if self.ctx.auth_required and self.info.authenticated_user is None:
            # James's AuthRequiredHook (auth.required, a submission port): mandatory,
            # before any hook, so that no hook's OK can let an anonymous sender through.
            return R.AUTH_REQUIRED
        chain = self.ctx.hooks
        if chain.mail_parameters:
            # James's MailParametersHook: each parameter a hook declared, before the
            # MAIL hooks (the core already checked syntax and the parameters it knows).
            for name, value in event.params.items():
                if name.upper() in chain.mail_parameters:
                    result = await chain.run_mail_parameter(self.info, name.upper(), value)
                    self.disconnect = self.disconnect or result.disconnect
                    if result.refused:
                        return result.refusal()
        result = await self._run_hooks("on_mail", event)
        if result.refused:
            return result.refusal()
        self._mail = event
        self.info.sender = event.address
        self.info.recipients = []
        self.info.smtputf8 = event.smtputf8
        return R.SENDER_OK

    async def _rcpt(self, event: RcptTo) -> Reply:
        result = await self._run_hooks("on_rcpt", event)
        if result.refused:
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
            self._trace_size = writer.size
            self._header = bytearray() if self.ctx.hooks.wants("on_message") else None
            self._header_done = False
        except OSError as exc:
            self._abort_message()
            return _storage_reply(exc)
        return R.START_DATA

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        if self._header is not None and not self._header_done:
            self._capture_header(data)
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
        if self.ctx.hooks.wants("on_message"):
            refusal = await self._message_hooks(writer, event)
            if refusal is not None:
                self._abort_message()
                return self._per_recipient(refusal, n)
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
        """The Received header's with-clause (RFC 5321 4.4, RFC 3848, RFC 6531 3.7.3):
        ESMTP, then S for TLS and A for AUTH (ESMTPS, ESMTPSA), UTF8 for SMTPUTF8."""
        info = self.info
        suffix = ("S" if info.tls else "") + ("A" if info.authenticated_user else "")
        if self.ctx.protocol == "LMTP":
            return ("UTF8LMTP" if info.smtputf8 else "LMTP") + suffix
        if info.smtputf8:
            return "UTF8SMTP" + suffix
        if not info.esmtp:
            return "SMTP"  # HELO: RFC 3848's S and A extend ESMTP only
        return "ESMTP" + suffix

    def _tls_comment(self) -> str:
        """The protocol and cipher, as Postfix records them (a comment line)."""
        info = self.info
        if not info.tls:
            return ""
        bits = f" ({info.tls_bits}/{info.tls_bits} bits)" if info.tls_bits else ""
        return f"\t(using {info.tls_version} with cipher {info.tls_cipher}{bits})\r\n"

    def _trace_headers(self, queue_id: str) -> bytes:
        info = self.info
        rcpts = info.recipients
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        date = format_datetime(datetime.now(UTC))
        text = (
            f"Return-Path: <{info.sender or ''}>\r\n"
            f"Received: from {info.helo or 'unknown'} ([{info.client_ip}])\r\n"
            f"{self._tls_comment()}"
            f"\tby {self.ctx.hostname} (kittiwake) with {self._with_protocol()} id {queue_id}"
            f"{for_clause};\r\n\t{date}\r\n"
        )
        return text.encode("utf-8")

    # ---- hooks --------------------------------------------------------------------

    async def _run_hooks(self, method: str, *args: object) -> HookResult:
        """Ask the hooks in order (``Chain.run``); the first answer other than
        DECLINED wins. A disconnect asked for is remembered for the listener."""
        result = await self.ctx.hooks.run(method, self.info, *args)
        if result.disconnect:
            self.disconnect = True
        return result

    def _capture_header(self, data: bytes) -> None:
        """Keep the client's header section (up to the empty line) for message hooks."""
        header = self._header
        assert header is not None
        if not header and data.startswith(b"\r\n"):
            header += b"\r\n"  # no header fields at all
            self._header_done = True
            return
        searched = max(0, len(header) - 3)
        header += data
        end = header.find(b"\r\n\r\n", searched)
        if end >= 0:
            del header[end + 4 :]
            self._header_done = True
        elif len(header) > HEADER_LIMIT:
            del header[HEADER_LIMIT + 1 :]  # one byte over: hooks see it as incomplete
            self._header_done = True

    async def _message_hooks(self, writer: SpoolWriter, event: MessageComplete) -> Reply | None:
        header = bytes(self._header or b"")
        # No empty line at all: the whole text is header fields (RFC 5322 3.5).
        complete = len(header) <= HEADER_LIMIT
        message = Message(writer.queue_id, event.size, header, complete, writer.ensure_file)
        result = await self._run_hooks("on_message", message)
        if result.refused:
            return result.refusal()
        if message.edits:
            try:
                self._apply_edits(writer, message)
            except OSError as exc:
                return _storage_reply(exc)
        return None

    def _apply_edits(self, writer: SpoolWriter, message: Message) -> None:
        """Header fields the hooks added or replaced, written into the spooled text
        (just after the trace headers)."""
        start = self._trace_size
        header = message.header if message.header_complete else b""
        fields = split_header(header)
        rest = header[sum(len(raw) for _, _, raw in fields) :]  # the empty line, if any
        added: list[bytes] = []
        for name, value, replace in message.edits:
            if replace:
                prefix = name.lower().encode() + b":"
                fields = [f for f in fields if f[0].lower() != name.lower()]
                added = [a for a in added if not a.lower().startswith(prefix)]
            added.append(f"{name}: {value}\r\n".encode())
        if header:
            kept = b"".join(raw for _, _, raw in fields)
            writer.splice(start, start + len(header), b"".join(added) + kept + rest)
        else:
            writer.splice(start, start, b"".join(added))


def _bye(ctx: SessionContext) -> Reply:
    return Reply(221, "2.0.0", f"{ctx.hostname} closing connection")


def _storage_reply(exc: OSError) -> Reply:
    """Disk full (or quota) is 452 4.3.1 (RFC 3463); other I/O errors 451 4.3.0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return R.INSUFFICIENT_STORAGE
    log.error("spool write failed: %s", exc)
    return R.LOCAL_ERROR
