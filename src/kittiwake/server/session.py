"""The application side of one connection: turns the core's decisions into replies.

Each decision goes through the hook chain (``hooks/chain.py``: configured hooks first,
then kittiwake's own) and then through the mandatory policy rules, which no hook's OK
can skip. A hook's ``disconnect`` sets :attr:`Session.disconnect`; the listener closes
the connection after sending the reply.
Message text streams into a spool entry; ``250`` is sent only after the entry is
fsynced (``Spool.commit``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol

from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.hooks.api import HEADER_LIMIT, Message, SessionInfo, split_header
from kittiwake.hooks.chain import Chain
from kittiwake.hooks.result import CONNECT_FAILED, HOOK_FAILED, HookResult
from kittiwake.mailet.message import format_field
from kittiwake.policy.headers import from_addresses, header_fields, submission_fields
from kittiwake.policy.identity import IdentityMode, from_header_reply
from kittiwake.policy.relay import SessionTrust, recipient_reply
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable
from kittiwake.protocol import (
    Auth,
    AuthResponse,
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
from kittiwake.storage.base import DomainStore, RewriteStore, UserStore

from .access import Access, Authenticator
from .recipients import gather

__all__ = ["RcptQuota", "Session", "SessionContext"]

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
    #: ``<auth><required>``: MAIL refused (530 5.7.0) unless the client authenticated
    auth_required: bool = False
    #: AUTH, trusted networks, sender identity, aliases (issue 5); None: none of them
    #: (LMTP), and relaying is open to nobody
    access: Access | None = None
    #: mailbox quotas, checked at RCPT (None: not checked)
    quota: RcptQuota | None = None
    #: the rewrite table for an LMTP listener, which has no ``access``
    rewrites: RewriteStore | None = None
    #: the mailet container adds Delivered-To (AddDeliveredToHeader): a single-recipient
    #: mail's spool file starts with it, so that its mailbox still gets a hard link
    delivered_to: bool = False


class Editable(Protocol):
    """A message being received that message hooks may read and edit (a spool entry,
    or LMTP's :class:`~kittiwake.delivery.direct.MessageFile`)."""

    queue_id: str

    def ensure_file(self) -> str: ...

    def splice(self, start: int, end: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class RcptQuota:
    """What RCPT needs to refuse a recipient whose mailboxes are all full."""

    deliverer: MaildirDeliverer
    #: final address -> canonical local mailbox (None: not a local mailbox)
    mailbox_of: Callable[[str], str | None]
    #: LMTP's over-quota reply is 552 5.2.2 (else 452 4.2.2, as always for SMTP)
    final: bool = True


class Session:
    """Decides for one connection. Created by the listener, driven by its events."""

    def __init__(self, ctx: SessionContext, info: SessionInfo) -> None:
        self.ctx = ctx
        self.info = info
        self._writer: SpoolWriter | None = None
        self._mail: MailFrom | None = None
        self._failed: OSError | None = None  # spool write failed during this message
        self._delivered_to = ""  # the spool file of this message starts with it
        self.messages = 0  # accepted, for the connection's log line
        self.recipients = 0
        #: a hook asked to close the connection after the reply being decided
        self.disconnect = False
        # the client's header section, captured for message hooks (None: not capturing)
        self._header: bytearray | None = None
        self._header_done = False
        self._trace_size = 0
        #: AUTH and trust (None where the listener has no ``Access``, e.g. LMTP)
        self.auth = Authenticator(ctx.access, info) if ctx.access is not None else None

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
        if isinstance(event, Auth | AuthResponse) and self.auth is not None:
            if isinstance(event, Auth):
                return await self.auth.start(event, self.auth_result)
            return await self.auth.respond(event, self.auth_result)
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
        """The AUTH hooks' call site (``server/access.py`` calls it): after the SASL
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
        if self.auth is not None:
            self.auth.reset()
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
        lines = [f"{self.ctx.hostname} Hello {event.name} [{info.client_ip}]"]
        if event.extended and self.auth is not None:
            lines += self.auth.ehlo_lines()  # the core appends its own keywords after
        return Reply(250, "", "\n".join(lines))

    async def _mail_from(self, event: MailFrom) -> Reply:
        trusted = self.auth is not None and self.auth.relay_allowed
        if self.ctx.auth_required and self.info.authenticated_user is None and not trusted:
            # James's AuthRequiredHook (auth.required, a submission port): mandatory,
            # before any hook, so that no hook's OK can let an anonymous sender through.
            # A trusted address (authorizedAddresses) counts as authenticated, as in James.
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
        # Mandatory: verifyIdentity, whatever the hooks answered.
        refusal = self.auth.sender_refusal(event.address) if self.auth is not None else None
        if refusal is not None:
            self._log_refusal("MAIL", refusal, event.address)
            return refusal
        self._mail = event
        self.info.sender = event.address
        self.info.recipients = []
        self.info.smtputf8 = event.smtputf8
        return R.SENDER_OK

    async def _rcpt(self, event: RcptTo) -> Reply:
        result = await self._run_hooks("on_rcpt", event)
        if result.refused:
            return result.refusal()
        # Mandatory rules: run whatever the hooks answered (OK included). The relay rule
        # first; then, as James rechecks at RCPT, the sender's identity. The rewrite
        # table is applied to judge the recipient (an alias of a user is valid); the
        # envelope keeps the address as given, and the mailet container's
        # RecipientRewriteTable rewrites it at delivery, as in James.
        auth = self.auth
        rcpt = gather(event.address, self.ctx.domains, self.ctx.users, self._table())
        trust = auth.trust() if auth is not None else _NO_TRUST
        refusal = recipient_reply(rcpt.facts, trust)
        if refusal is None and auth is not None:
            refusal = auth.sender_refusal(self.info.sender or "")
        if refusal is None and self.ctx.quota is not None:
            refusal = await self._quota_refusal(rcpt.targets, self.ctx.quota)
        if refusal is not None:
            self._log_refusal("RCPT", refusal, event.address)
            return refusal
        self.info.recipients.append(event.address)
        return R.RECIPIENT_OK

    def _table(self) -> RewriteTable:
        """The rewrite table RCPT judges with (aliases of users are valid)."""
        if self.ctx.access is not None:
            return self.ctx.access.table()
        if self.ctx.rewrites is not None:
            return self.ctx.rewrites.rewrite_table()
        return EMPTY_TABLE

    async def _quota_refusal(self, targets: Sequence[str], q: RcptQuota) -> Reply | None:
        """A recipient all of whose mailboxes are full (or cannot take the size MAIL
        declared, RFC 1870) is refused now: SMTP ``452 4.2.2`` (temporary: the sender's
        server retries, the user may make room), LMTP the reply its delivery would get.
        A recipient with any other destination (a remote forward, a mailbox with room)
        is accepted."""
        quotas = q.deliverer.quotas
        if quotas is None or not targets or not quotas.active:
            return None  # the common case costs no lookup
        mailboxes = []
        for target in targets:
            mailbox = q.mailbox_of(target)
            if mailbox is None or not quotas.limit_for(mailbox):
                return None
            mailboxes.append(mailbox)
        size = _declared_size(self._mail)
        for mailbox in mailboxes:
            try:
                used = await asyncio.to_thread(q.deliverer.quota_usage, mailbox)
            except OSError:
                return None  # delivery will tell
            if used is None or (not used.full and used.allows(size, 0)):
                return None
        if self.ctx.protocol == "LMTP" and q.final:
            return R.MAILBOX_OVER_QUOTA
        return R.MAILBOX_FULL

    def _log_refusal(self, verb: str, refusal: Reply, address: str) -> None:
        info = self.info
        log.info(
            "%s: reject %s from [%s]%s: %s; from=<%s> to=<%s>",
            info.session_id,
            verb,
            info.client_ip,
            f" user={info.authenticated_user}" if info.authenticated_user else "",
            refusal,
            info.sender if verb == "RCPT" else address,
            address if verb == "RCPT" else "",
        )

    # ---- message ------------------------------------------------------------------

    def _begin_message(self) -> Reply:
        self._abort_message()
        self._failed = None
        try:
            writer = self.ctx.spool.begin()
            self._writer = writer
            rcpts = self.info.recipients
            self._delivered_to = ""
            if self.ctx.delivered_to and self.ctx.protocol == "SMTP" and len(rcpts) == 1:
                # the Delivered-To that AddDeliveredToHeader would add (the container hides
                # it unless the mailbox of exactly this recipient gets the file as it is)
                self._delivered_to = rcpts[0]
                writer.write(format_field("Delivered-To", rcpts[0]))
            writer.write(self._trace_headers(writer.queue_id))
            self._trace_size = writer.size
            wanted = self.ctx.hooks.wants("on_message") or self._submission()
            self._header = bytearray() if wanted else None
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
        if self._submission():
            refusal = self._submit(writer)
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
            # the mailet container's SMTPAuthSuccessful / SMTPIsAuthNetwork (relay-allowed)
            auth_user=info.authenticated_user or "",
            auth_network=info.trusted_network,
            delivered_to=self._delivered_to,
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
        reply = Reply(250, "2.0.0", f"Ok: queued as {writer.queue_id}")
        if self.ctx.protocol == "LMTP":
            return [
                Reply(250, "2.0.0", f"<{r}> Ok: queued as {writer.queue_id}")
                for r in info.recipients
            ]
        return reply

    def _submission(self) -> bool:
        """Message submission (RFC 6409): the client authenticated on an SMTP listener."""
        return self.ctx.protocol == "SMTP" and self.info.authenticated_user is not None

    def _submit(self, writer: SpoolWriter) -> Reply | None:
        """An authenticated message: its ``From:`` must be the user's (verifyIdentity),
        and a missing ``Date:`` or ``Message-ID:`` is added (RFC 6409 8.2, 8.3)."""
        auth = self.auth
        assert auth is not None
        fields = header_fields(bytes(self._header or b""))
        mode = IdentityMode(auth.access.config.verify_identity)
        refusal = from_header_reply(
            mode,
            envelope_sender=self.info.sender or "",
            authenticated_user=self.info.authenticated_user,
            from_addresses=from_addresses(fields),
            may_send_as=auth.may_send_as,
        )
        if refusal is not None:
            self._log_refusal("DATA", refusal, self.info.sender or "")
            return refusal
        added = submission_fields(
            fields,
            now=datetime.now(UTC),
            message_id=f"{writer.queue_id}.{self.info.session_id}@{self.ctx.hostname}",
        )
        if added:
            try:
                writer.splice(self._trace_size, self._trace_size, added)
            except OSError as exc:
                return _storage_reply(exc)
        return None

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
        date = _received_date()
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

    async def _message_hooks(self, writer: Editable, event: MessageComplete) -> Reply | None:
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

    def _apply_edits(self, writer: Editable, message: Message) -> None:
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


_NO_TRUST = SessionTrust(relay_allowed=False, auth_announced=False)
_date_cache: tuple[int, str] = (-1, "")


def _received_date() -> str:
    """The Received header's date (RFC 5322 3.3), formatted once per second: the
    email.utils formatting took ~12 us, a sizeable part of a message's own work on
    the event loop."""
    global _date_cache
    now = time.time()
    second, text = _date_cache
    if int(now) != second:
        text = format_datetime(datetime.fromtimestamp(int(now), UTC))
        _date_cache = (int(now), text)
    return text


def _declared_size(mail: MailFrom | None) -> int:
    """MAIL's SIZE parameter (RFC 1870), 0 if absent."""
    return mail.size or 0 if mail is not None else 0


def _bye(ctx: SessionContext) -> Reply:
    return Reply(221, "2.0.0", f"{ctx.hostname} closing connection")


def _storage_reply(exc: OSError) -> Reply:
    """Disk full (or quota) is 452 4.3.1 (RFC 3463); other I/O errors 451 4.3.0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return R.INSUFFICIENT_STORAGE
    log.error("spool write failed: %s", exc)
    return R.LOCAL_ERROR
