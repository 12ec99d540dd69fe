"""The LMTP side of a session: delivery into the mailboxes after the final dot, one reply
per accepted recipient (RFC 2033 4.2), with no queue in between (as James's LMTP).

Everything up to DATA is the SMTP session's (:class:`~kittiwake.server.session.Session`):
LHLO, MAIL and RCPT go through the same hooks and the same mandatory rules, so an
unknown local user is refused at RCPT with ``550 5.1.1`` and a non-local domain with
``550 5.7.1``. Only the message differs. Its text streams into a
:class:`~kittiwake.delivery.direct.MessageFile` (memory, then a file past a threshold);
after the final dot (or the LAST chunk) :class:`~kittiwake.delivery.direct.DirectDelivery`
fsyncs it and links it into every recipient's Maildir, and each recipient gets its own
reply, in RCPT order, naming it: ``250 2.0.0 <bob@example.com> Ok: delivered as QID``
once its Maildir file and directory are fsynced; a 4xx or 5xx for a recipient whose
mailbox failed, while the others still get their 250.

Aliases (issue 6): RCPT judges a recipient with the rewrite table (an alias of a user
is valid), and after the dot each recipient is expanded into the mailboxes it stands
for (``lmtp_routes.py``): one reply per original recipient, 250 only if every mailbox
behind it was written; the addresses a forward leads elsewhere are put in the spool
(fsynced before the reply) for the mailet container to relay.

Message hooks (``on_message``, the handlers of ``lmtpserver.xml``'s
``<handlerchain>``) run after the dot and before delivery, as James's LMTP runs its
JamesMessageHooks: a refusal is every recipient's reply; header edits go into the
message before it is written anywhere.

A Unix-domain socket peer has no address: its ``client_ip`` is ``unix`` (logs, hooks)
and its Received header names no address.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

from kittiwake.config.model import ListenerConfig
from kittiwake.delivery.base import Outcome, Status
from kittiwake.delivery.direct import DirectDelivery, MessageFile
from kittiwake.hooks.api import SessionInfo
from kittiwake.protocol import (
    DataRequested,
    Event,
    Hello,
    MessageAborted,
    MessageComplete,
    MessageData,
    Reply,
    Reset,
)
from kittiwake.protocol import replies as R
from kittiwake.queue.spool import Envelope

from .lmtp_routes import combine, route
from .session import Session, SessionContext

__all__ = [
    "UNIX_CLIENT",
    "UNIX_SOCKET_MODE",
    "LmtpSession",
    "bind_unix_socket",
    "lmtp_session_factory",
    "remove_unix_socket",
]

log = logging.getLogger("kittiwake.smtp")
maillog = logging.getLogger("kittiwake.mail")

#: the ``client_ip`` of a connection over a Unix-domain socket
UNIX_CLIENT = "unix"
#: the socket file's mode: any local user may connect, as with Dovecot's default LMTP
#: socket; restrict it with the permissions of the directory that holds it
UNIX_SOCKET_MODE = 0o666


class LmtpSession(Session):
    """Decides for one LMTP connection (see the module doc).

    Args:
        ctx: the listener's shared context.
        info: this connection.
        delivery: writes messages into mailboxes.
        resolve: recipient address -> canonical mailbox, None if there is none (called
            on the event loop, as the spool runner does).
    """

    def __init__(
        self,
        ctx: SessionContext,
        info: SessionInfo,
        delivery: DirectDelivery,
        resolve: Callable[[str], str | None],
    ) -> None:
        super().__init__(ctx, info)
        self.delivery = delivery
        self.resolve = resolve
        self._message: MessageFile | None = None
        self._write_error: OSError | None = None  # the message file failed during DATA

    async def decide(self, event: Event) -> Reply | list[Reply]:
        if isinstance(event, DataRequested):
            return self._begin()
        if isinstance(event, MessageComplete):
            return await self._deliver(event)
        reply = await super().decide(event)
        if isinstance(event, Hello) and isinstance(reply, Reply) and reply.positive:
            self._abort()  # LHLO between BDAT chunks ends the transaction (RFC 5321 4.1.4)
        return reply

    def notice(self, event: Event) -> None:
        if isinstance(event, MessageData):
            if self._message is not None:
                if self._header is not None and not self._header_done:
                    self._capture_header(event.data)
                try:
                    self._message.write(event.data)
                except OSError as exc:
                    # Keep reading the client's text; the replies come after the dot.
                    self._write_error = exc
                    self._abort()
            return
        if isinstance(event, (MessageAborted, Reset)):
            self._abort()
        super().notice(event)

    def close(self) -> None:
        self._abort()
        super().close()

    # ---- message ------------------------------------------------------------------

    def _begin(self) -> Reply:
        self._abort()
        self._write_error = None
        try:
            message = self.delivery.begin()
            message.write(self._trace_header(message.queue_id))
        except (OSError, RuntimeError) as exc:
            log.error("%s: cannot start a message: %s", self.info.session_id, exc)
            return R.LOCAL_ERROR
        self._message = message
        self._trace_size = message.size
        self._header = bytearray() if self.ctx.hooks.wants("on_message") else None
        self._header_done = False
        return R.START_DATA

    def _abort(self) -> None:
        if self._message is not None:
            self._message.abort()
            self._message = None

    async def _deliver(self, event: MessageComplete) -> list[Reply]:
        info = self.info
        recipients = list(info.recipients)
        message, self._message = self._message, None
        if message is None:
            exc = self._write_error
            return _all(recipients, _storage_reply(exc) if exc is not None else R.LOCAL_ERROR)
        received_at = time.time()
        if self.ctx.hooks.wants("on_message"):
            refusal = await self._message_hooks(message, event)
            if refusal is not None:
                message.abort()
                self._log_refusal("DATA", refusal, info.sender or "")
                return _all(recipients, refusal)
        try:
            routes = route(
                recipients, self._table(), self.resolve, self.ctx.domains.contains_domain
            )
        except Exception:  # a store error: nobody is delivered, the MTA retries
            log.exception("%s: cannot resolve recipients", info.session_id)
            message.abort()
            return _all(recipients, R.LOCAL_ERROR)
        remote = list(dict.fromkeys(a for r in routes for a in r.remote))
        forwarded: Outcome | None = None
        if remote:
            forwarded = await self._forward(message, remote, received_at)
        targets = [t for r in routes for t in r.targets]
        try:
            if targets:
                outcomes = await self.delivery.deliver(message, targets, received_at)
            else:
                message.abort()
                outcomes = []
        except Exception as exc:  # the file or the journal failed: nobody gets a 250
            log.error("%s: delivery of %s failed: %s", info.session_id, message.queue_id, exc)
            reply = _storage_reply(exc) if isinstance(exc, OSError) else R.LOCAL_ERROR
            return _all(recipients, reply)
        by_index = {o.index: o for o in outcomes}
        final = [
            Outcome(0, r.recipient, Status.FAILED, "5.4.6", detail="rewrite loop")
            if r.loop
            else combine(
                r.recipient,
                [by_index[t.index] for t in r.targets],
                forwarded if r.remote else None,
            )
            for r in routes
        ]
        self.messages += 1
        self.recipients += sum(o.status is Status.SENT for o in final)
        if maillog.isEnabledFor(logging.INFO):
            parts = [(by_index[t.index], r.recipient) for r in routes for t in r.targets]
            if forwarded is not None:
                parts += [(replace(forwarded, recipient=a), "") for a in remote]
            _log(message, info, event.size, parts, received_at)
        return [_reply(o, message.queue_id) for o in final]

    async def _forward(
        self, message: MessageFile, remote: list[str], received_at: float
    ) -> Outcome:
        """Put the message in the spool for the addresses a forward leads elsewhere,
        durably, before any reply (the mailet container relays it: the envelope counts
        as from an authorized network, for the admin made the forward). Without
        ``Return-Path``: that belongs to the final delivery (RFC 5321 4.4)."""
        info = self.info
        writer = None
        try:
            writer = self.ctx.spool.begin()
            for chunk in message.chunks(self._return_path_size()):
                writer.write(chunk)
            envelope = Envelope(
                queue_id=writer.queue_id,
                sender=info.sender or "",
                recipients=tuple(remote),
                client_address=info.client_ip,
                helo=info.helo or "",
                protocol=self._with_protocol(),
                received_at=received_at,
                size=writer.size,
                auth_network=True,
            )
            await writer.commit(envelope)
        except OSError as exc:
            if writer is not None:
                writer.abort()
            log.error("%s: cannot queue the forward: %s", info.session_id, exc)
            return Outcome(0, "", Status.DEFERRED, "4.3.0", detail=f"spool: {exc}")
        return Outcome(0, "", Status.SENT, "2.0.0", f"queued as {writer.queue_id}")

    def _return_path_size(self) -> int:
        return len(f"Return-Path: <{self.info.sender or ''}>\r\n".encode())

    def _trace_header(self, queue_id: str) -> bytes:
        """Return-Path and Received (RFC 5321 4.4; ``with LMTP``/``LMTPS``: RFC 3848)."""
        info = self.info
        rcpts = info.recipients
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        peer = "" if info.client_ip == UNIX_CLIENT else f" ([{info.client_ip}])"
        date = format_datetime(datetime.now(UTC))
        return (
            f"Return-Path: <{info.sender or ''}>\r\n"
            f"Received: from {info.helo or 'unknown'}{peer}\r\n"
            f"{self._tls_comment()}"
            f"\tby {self.ctx.hostname} (kittiwake) with {self._with_protocol()} id {queue_id}"
            f"{for_clause};\r\n\t{date}\r\n"
        ).encode()


def lmtp_session_factory(
    delivery: DirectDelivery, resolve: Callable[[str], str | None]
) -> Callable[[SessionContext, SessionInfo], Session]:
    """What an LMTP listener makes its sessions with."""

    def make(ctx: SessionContext, info: SessionInfo) -> Session:
        return LmtpSession(ctx, info, delivery, resolve)

    return make


def _named(recipient: str, reply: Reply) -> Reply:
    """RFC 2033 4.2 does not ask for it, but naming the recipient makes logs readable."""
    return reply.with_text(f"<{recipient}> {reply.text}")


def _all(recipients: Sequence[str], reply: Reply) -> list[Reply]:
    return [_named(r, reply) for r in recipients]


def _reply(o: Outcome, queue_id: str) -> Reply:
    if o.status is Status.FAILED and o.dsn == "5.4.6":
        return _named(o.recipient, R.ROUTING_LOOP)
    if o.status is Status.SENT:
        return _named(o.recipient, R.DELIVERED.with_text(f"{R.DELIVERED.text} as {queue_id}"))
    if o.status is Status.DEFERRED:
        return _named(o.recipient, R.MAILBOX_FULL if o.dsn == "4.2.2" else R.MAILBOX_UNAVAILABLE)
    if o.dsn == "5.1.1":
        return _named(o.recipient, R.NO_SUCH_USER)
    if o.dsn == "5.2.2":
        return _named(o.recipient, R.MAILBOX_OVER_QUOTA)
    return _named(o.recipient, Reply(550, o.dsn, "Mailbox unavailable"))


def _storage_reply(exc: OSError) -> Reply:
    """Disk full (or quota) is 452 4.3.1 (RFC 3463); other I/O errors 451 4.3.0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return R.INSUFFICIENT_STORAGE
    return R.LOCAL_ERROR


def _log(
    message: MessageFile,
    info: SessionInfo,
    size: int,
    parts: Sequence[tuple[Outcome, str]],
    received_at: float,
) -> None:
    """The mail log, as for a message through the spool (``queue/runner.py``): one
    line per destination, with ``orig_to`` when an alias led there (as Postfix)."""
    qid = message.queue_id
    maillog.info(
        "%s: accepted from=<%s>, client=[%s]:%d, size=%d, nrcpt=%d, listener=%s",
        qid,
        info.sender,
        info.client_ip,
        info.client_port,
        size,
        len(info.recipients),
        info.listener,
    )
    delay = time.time() - received_at
    for o, orig in parts:
        orig_to = f", orig_to=<{orig}>" if orig and orig != o.recipient else ""
        if o.status is Status.SENT:
            where = o.location if o.location.startswith("queued") else f"mailbox={o.location}"
            maillog.info(
                "%s: to=<%s>%s, status=sent, delay=%.3f, dsn=%s, %s",
                qid,
                o.recipient,
                orig_to,
                delay,
                o.dsn,
                where,
            )
        else:
            maillog.info(
                "%s: to=<%s>%s, status=%s, delay=%.3f, dsn=%s, reason=%s",
                qid,
                o.recipient,
                orig_to,
                # no retry here: the MTA in front was told, and retries or bounces
                "bounced" if o.status is Status.FAILED else "deferred",
                delay,
                o.dsn,
                o.detail,
            )


def bind_unix_socket(cfg: ListenerConfig, path: str) -> tuple[socket.socket, int]:
    """A non-blocking listening Unix-domain socket at ``path``, mode 0666.

    A socket file left by a process that died is replaced; a live server's socket, or a
    file that is not a socket, is not.

    Returns:
        The socket, and the inode of its file (for :func:`remove_unix_socket`).

    Raises:
        OSError: the path cannot be bound; the message names listener and path.
    """
    where = f"listener {cfg.name}: cannot bind unix:{path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{where}: a file that is not a socket is in the way")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody listens there
            else:
                raise OSError(errno.EADDRINUSE, f"{where}: another server listens there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        inode = os.lstat(path).st_ino
        os.chmod(path, UNIX_SOCKET_MODE)
        sock.listen(cfg.connection_backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{where}: {exc.strerror}") from exc
    return sock, inode


def unix_socket_files(sockets: Iterable[socket.socket]) -> list[tuple[str, int]]:
    """(path, inode) of each Unix-domain socket among ``sockets``, just bound: what
    :func:`remove_unix_socket` removes at stop."""
    files = []
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()
            with contextlib.suppress(OSError):
                files.append((path, os.lstat(path).st_ino))
    return files


def remove_unix_socket(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still the one we bound (never raises:
    another process may have replaced it meanwhile)."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
