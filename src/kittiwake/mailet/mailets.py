"""The standard mailets, by their James names."""

from __future__ import annotations

import logging
import re
import time

from kittiwake.delivery.dsn import DsnRecipient, build_dsn
from kittiwake.mailet.api import ERROR, GHOST, ROOT, Mail, Mailet, MailetConfig, MailetError
from kittiwake.mailet.dkim import DKIMSign
from kittiwake.mailet.matchers import SENT_BY_MAILET
from kittiwake.mailet.message import Message
from kittiwake.mailet.remote import RemoteDelivery
from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.rewrite import DEFAULT_MAPPING_LIMIT, expand

__all__ = ["MAILETS", "NOT_IMPLEMENTED_PASS"]

log = logging.getLogger("kittiwake.mailet")


def _required(config: MailetConfig, name: str) -> str:
    value = config.get(name)
    if not value:
        raise MailetError(f"<{name}> is required")
    return value


class Null(Mailet):
    """Discards the mail (its recipients are finished)."""

    def service(self, mail: Mail) -> None:
        self.context.finished(mail, "discarded (Null)")
        mail.state = GHOST


class ToProcessor(Mailet):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.processor = _required(config, "processor")
        self.notice = config.get("notice")

    def service(self, mail: Mail) -> None:
        if self.notice:
            mail.error_message = self.notice
        mail.state = self.processor


class ToRepository(Mailet):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.url = _required(config, "repositoryPath")
        self.pass_through = config.get_bool("passThrough", False)
        config.get("notice")  # James's samples carry one; it changes nothing

    def service(self, mail: Mail) -> None:
        repo = self.context.repository(self.url)
        key = repo.store(mail)
        log.info("%s: stored in repository %s as %s", mail.name, repo.name, key)
        if not self.pass_through:
            self.context.finished(mail, f"stored in repository {repo.name}", failed=True)
            mail.state = GHOST


class LocalDelivery(Mailet):
    """Into the recipients' Maildirs. A recipient whose mailbox is over quota goes to
    the ``error`` processor with ``552 5.2.2`` (James's MailDispatcher does the same
    with an OverQuotaException): the default flow bounces it (DSN status 5.2.2)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.consume = config.get_bool("consume", True)
        config.get("retries")

    def service(self, mail: Mail) -> None:
        size = mail.message.size
        full = {r: why for r in mail.recipients if (why := self.context.over_quota(r, size))}
        if full:
            bad = mail.duplicate()
            bad.recipients = list(full)
            bad.error_message = "552 5.2.2 Mailbox full: " + "; ".join(
                f"{r}: {why}" for r, why in full.items()
            )
            self.context.send_mail(bad, ERROR, derived=False)
            mail.recipients = [r for r in mail.recipients if r not in full]
            if not mail.recipients:
                mail.state = GHOST
                return
        self.context.deliver_local(mail if not self.consume else mail.duplicate())
        if self.consume:
            mail.state = GHOST


class AddHeader(Mailet):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.name = _required(config, "name")
        self.value = config.get("value", "") or ""

    def service(self, mail: Mail) -> None:
        mail.message.add_header(self.name, self.value)


class SetMimeHeader(AddHeader):
    def service(self, mail: Mail) -> None:
        mail.message.set_header(self.name, self.value)


class RemoveMimeHeader(Mailet):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.names = [n for n in re.split(r"[,\s]+", _required(config, "name")) if n]

    def service(self, mail: Mail) -> None:
        for name in self.names:
            mail.message.remove_header(name)


class AddDeliveredToHeader(Mailet):
    """``Delivered-To: <recipient>`` in each recipient's copy (RFC 9228).

    Kittiwake's addition, as Postfix's local delivery does: a recipient the message
    already names in a ``Delivered-To`` field has been here before (a forward that
    came back), so it goes to ``loopProcessor`` (default ``error``, which bounces)
    with "5.4.6 mail forwarding loop" instead of being delivered again."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.loop_processor = config.get("loopProcessor", "error") or "error"

    def service(self, mail: Mail) -> None:
        seen = {_canon(v.strip().strip("<>")) for v in mail.message.get_all("Delivered-To")}
        loops = [r for r in mail.recipients if _canon(r) in seen] if seen else []
        if loops:
            log.warning(
                "%s: mail forwarding loop for %s (Delivered-To)", mail.name, ", ".join(loops)
            )
            bad = mail.duplicate()
            bad.recipients = loops
            bad.error_message = f"550 5.4.6 mail forwarding loop for {', '.join(loops)}"
            self.context.send_mail(bad, self.loop_processor, derived=False)
            mail.recipients = [r for r in mail.recipients if r not in loops]
        for rcpt in mail.recipients:
            mail.per_recipient_headers.setdefault(rcpt, []).insert(0, ("Delivered-To", rcpt))
        if not mail.recipients:
            mail.state = GHOST


class PostmasterAlias(Mailet):
    """postmaster@<any local domain> -> the configured postmaster."""

    def service(self, mail: Mail) -> None:
        ctx = self.context
        mapping: dict[str, list[str]] = {}
        for rcpt in mail.recipients:
            local, _, domain = rcpt.rpartition("@")
            if (
                local.lower() == "postmaster"
                and ctx.is_local_server(_canon_domain(domain))
                and _canon(rcpt) != ctx.postmaster
            ):
                mapping[rcpt] = [ctx.postmaster]
        if mapping:
            mail.replace_recipients(mapping)


class RecipientRewriteTable(Mailet):
    """Rewrites recipients with the rewrite table (``kittiwake alias``): address and
    domain aliases, forwards, regex mappings, recursively up to ``mappingLimit``. A
    recipient whose mapping loops goes to ``errorProcessor`` (default ``error``).

    As in James, rewritten targets on other hosts leave this mail: they are sent as a
    new mail (``MailetContext.enqueue``: own queue ID, ``SentByMailet``, so the default
    transport relays it), whatever the client was allowed. That is safe because only
    the administrator's table can name them; recipients the client gave are judged
    by the relay rule, here and at RCPT. The new mail keeps the original envelope
    sender (no SRS, as James): SPF may fail at the destination."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.error_processor = config.get("errorProcessor", "error") or "error"
        self.limit = config.get_int("mappingLimit", DEFAULT_MAPPING_LIMIT)

    def service(self, mail: Mail) -> None:
        table = self.context.rewrite_table()
        if not table:
            return
        mapping: dict[str, list[str]] = {}
        loops: list[str] = []
        for rcpt in mail.recipients:
            result = expand(rcpt, table, self.limit)
            if result.loop:
                loops.append(rcpt)
            elif result.rewritten:
                mapping[rcpt] = list(result.addresses)
        if loops:
            bad = mail.duplicate()
            bad.recipients = loops
            bad.error_message = "550 5.4.6 Recipient rewrite loop"
            self.context.send_mail(bad, self.error_processor, derived=False)
            mail.recipients = [r for r in mail.recipients if r not in loops]
        if mapping:
            targets = {t: None for r in mail.recipients for t in mapping.get(r, (r,))}
            log.info("%s: rewritten to %s", mail.name, ", ".join(targets))
            self._send_remote(mail, mapping)
            mail.replace_recipients(mapping)
        if not mail.recipients:
            mail.state = GHOST

    def _send_remote(self, mail: Mail, mapping: dict[str, list[str]]) -> None:
        """Take the remote targets out of ``mapping`` and send them as one new mail."""
        ctx = self.context
        far: list[str] = []
        origins: dict[str, int] = {}
        sources: list[str] = []
        for rcpt, targets in mapping.items():
            # (an address without a domain stays here, for the relay rule to judge)
            remote = [t for t in targets if "@" in t and not ctx.is_local_server(_domain_of(t))]
            if not remote:
                continue
            mapping[rcpt] = [t for t in targets if t not in remote]
            origin = mail.origins.get(rcpt)
            sources.append(str(origin) if origin is not None else _canon(rcpt))
            for t in remote:
                if t.lower() not in (f.lower() for f in far):
                    far.append(t)
                    if origin is not None:
                        origins.setdefault(t, origin)
        if not far:
            return
        copy = mail.duplicate()
        copy.recipients = far
        copy.origins = origins
        copy.per_recipient_headers = {}
        key = f"{mail.state}|{','.join(sorted(sources))}"
        try:
            qid = ctx.enqueue(copy, key)
        except OSError as exc:
            # not spooled (disk full...): these recipients are tried again later
            log.warning("%s: cannot spool the forward to %s: %s", mail.name, ",".join(far), exc)
            ctx.defer(copy, f"forward not spooled: {exc}")
            return
        # the outcome of the envelope recipients the forward stands for
        record = copy.duplicate()
        record.recipients = [t for t in far if t in origins]
        if record.recipients:
            ctx.finished(record, f"forwarded as {qid}")


class LogMessage(Mailet):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.headers = config.get_bool("headers", True)
        self.body = config.get_bool("body", True)
        self.max_body = config.get_int("maxBody", 2000)
        self.comment = config.get("comment")

    def service(self, mail: Mail) -> None:
        parts = [f"{mail.name}: from=<{mail.sender or ''}> to={','.join(mail.recipients)}"]
        if self.comment:
            parts.append(self.comment)
        if self.headers:
            parts.append(mail.message.header_bytes().decode("utf-8", "replace").rstrip())
        if self.body:
            body = mail.message.body_bytes()[: self.max_body]
            parts.append(body.decode("utf-8", "replace").strip())
        log.info("%s", "\n".join(parts))


class SetMailAttribute(Mailet):
    def service(self, mail: Mail) -> None:
        for name, value in self.config.params.items():
            mail.attributes[name] = value


def _status_of(mail: Mail) -> tuple[str, str]:
    """RFC 3463 status and diagnostic for a bounce, from the error message."""
    text = mail.error_message or "delivery failed"
    m = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", text)
    if m:
        return m.group(1), text
    low = text.lower()
    if "no such user" in low or "unknown user" in low:
        return "5.1.1", text
    if "relay" in low:
        return "5.7.1", text
    return "5.0.0", text


class Bounce(Mailet):
    """Sends the sender a delivery status notification about the recipients of this
    mail; the null sender never gets one (RFC 5321 6.1)."""

    default_pass_through = True

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.attachment = (config.get("attachment", "message") or "message").lower()
        if self.attachment not in ("message", "heads", "none", "all", "body"):
            raise MailetError(f"<attachment>: {self.attachment!r} is not message, heads or none")
        self.pass_through = config.get_bool("passThrough", self.default_pass_through)
        self.text = config.get("message") or config.get("messageString")
        self.prefix = config.get("prefix", "") or ""
        for unused in ("inline", "notice", "sender", "debug"):
            config.get(unused)

    def service(self, mail: Mail) -> None:
        ctx = self.context
        if mail.sender:
            status, diagnostic = _status_of(mail)
            data = build_dsn(
                reporting_mta=ctx.hostname,
                postmaster=ctx.postmaster,
                sender=mail.sender,
                recipients=[DsnRecipient(r, "failed", status, diagnostic) for r in mail.recipients],
                original=mail.message.as_bytes(),
                queue_id=mail.name,
                arrival=mail.received_at,
                now=mail.received_at or time.time(),
                attachment="heads" if self.attachment == "heads" else self.attachment,
                text=self.text.replace("[machine]", ctx.hostname) if self.text else None,
                subject_prefix=f"{self.prefix} " if self.prefix else "",
            )
            bounce = Mail(
                name=mail.name,
                sender=None,
                recipients=[mail.sender],
                message=Message.from_bytes(data),
                remote_addr="127.0.0.1",
                remote_host=ctx.hostname,
                attributes={SENT_BY_MAILET: True},
                received_at=mail.received_at,
            )
            ctx.send_mail(bounce, ROOT)
        else:
            log.info("%s: null sender, no bounce", mail.name)
        if not self.pass_through:
            ctx.finished(mail, "bounced", failed=True)
            mail.state = GHOST


class DSNBounce(Bounce):
    pass


class NOT_IMPLEMENTED_PASS(Mailet):
    """A James mailet kittiwake does not have: named at start, passes mail through."""

    def service(self, mail: Mail) -> None:
        return None


def _canon(address: str) -> str:
    try:
        return canonical_address(address)
    except InvalidName:
        return address.lower()


def _domain_of(address: str) -> str:
    return _canon_domain(address.rpartition("@")[2])


def _canon_domain(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except InvalidName:
        return domain.lower()


MAILETS: dict[str, type[Mailet]] = {
    cls.__name__: cls
    for cls in (
        Null,
        ToProcessor,
        ToRepository,
        LocalDelivery,
        AddHeader,
        SetMimeHeader,
        RemoveMimeHeader,
        AddDeliveredToHeader,
        PostmasterAlias,
        RecipientRewriteTable,
        LogMessage,
        SetMailAttribute,
        Bounce,
        DSNBounce,
    )
}
# issue 8: the real one (the stand-in above stays for custom configurations that
# name it by its dotted path)
MAILETS["RemoteDelivery"] = RemoteDelivery
# org.apache.james.jdkim.mailets.DKIMSign (issue 8 point 4)
MAILETS["DKIMSign"] = DKIMSign
