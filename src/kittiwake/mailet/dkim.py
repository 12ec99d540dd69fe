"""DKIMSign: a DKIM signature on outgoing mail (RFC 6376; Ed25519 per RFC 8463), made
with dkimpy.

Two ways to configure it:

* **Without parameters** (the built-in flow's ``relay`` processor): the signing domain
  is the domain of the message's ``From:`` address, and every key kittiwake has for that
  domain under ``DATA/dkim/<domain>/<selector>.key`` signs (``kittiwake dkim keygen``).
  A mail whose From: domain has no key goes on unsigned. ``From:`` rather than the
  envelope sender because that is the identity receivers check the signature against:
  DMARC passes only when ``d=`` is aligned with the From: domain (RFC 7489 3.1.1); the
  envelope sender is SPF's business, and is ``<>`` for bounces. A From: field with
  addresses of several domains, or several From: fields (RFC 5322 3.6 allows one), is
  not signed. Nor is mail from a sender kittiwake does not know (see
  :func:`signing_refusal`): an authenticated user gets signatures for the user's own
  addresses only, a client of ``authorizedAddresses`` for any, and mail from outside
  (forwarded on) none; delivery reports made here (From: the postmaster) are signed.
* **James's parameters**: ``signatureTemplate`` (``v=1; s=sel; d=example.com;
  h=from:to:subject; a=rsa-sha256; bh=; b=;``) with ``privateKey`` (PEM inline) or
  ``privateKeyFilepath``, and ``privateKeyPassword`` for an encrypted key. Every mail
  the matcher selects is signed with the template's ``d=`` and ``s=``, as in James.

The signature is computed over the bytes as RemoteDelivery sends them (aiosmtplib
writes every line ending as CRLF and ends the last line; the dot-stuffing it adds is
removed by the receiving server, RFC 5321 4.5.2): a message that is not in that form
already is rewritten to it first, so that what was signed is what is sent. The
DKIM-Signature field is added at the top, folded as dkimpy made it.
"""

from __future__ import annotations

import email.utils
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import dkim  # type: ignore[import-untyped]

from kittiwake.mailet.api import (
    Mail,
    Mailet,
    MailetConfig,
    MailetContext,
    MailetError,
    MessagingError,
)
from kittiwake.mailet.dkimkeys import (
    DkimKey,
    DkimKeyError,
    KeyStore,
    load_private_key,
    valid_domain,
    valid_selector,
)
from kittiwake.mailet.matchers import SENT_BY_MAILET
from kittiwake.mailet.message import Message
from kittiwake.policy.names import InvalidName, canonical_address
from kittiwake.policy.rewrite import senders_for

__all__ = [
    "SIGNED_FIELDS",
    "DKIMSign",
    "Template",
    "from_addresses",
    "from_domain",
    "sign_message",
    "signature_tags",
    "signing_refusal",
    "wire_form",
]

log = logging.getLogger("kittiwake.mailet")

#: the fields signed by default: those that make up what the reader sees and replies to
#: (RFC 6376 5.4.1)
SIGNED_FIELDS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "reply-to",
    "in-reply-to",
    "references",
)

# aiosmtplib's own rule (protocol.normalize_message_line_endings): CRLF, LF, lone CR
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
_TEMPLATE_TAGS = frozenset({"v", "a", "c", "d", "s", "h", "i", "l", "q", "t", "bh", "b"})
_CANON = frozenset({"simple", "relaxed"})


def wire_form(data: bytes) -> bytes:
    """``data`` as the SMTP client sends it, before dot-stuffing: every line ended by
    CRLF (RFC 5321 2.3.8), the last one too."""
    out = _LINE_END.sub(b"\r\n", data)
    return out if out.endswith(b"\r\n") else out + b"\r\n"


def from_addresses(message: Message) -> list[str]:
    """The addresses of the ``From:`` field; none when there is not exactly one field
    (RFC 5322 3.6) or it holds no address."""
    values = message.get_all("From")
    if len(values) != 1:
        return []
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


def from_domain(message: Message) -> str | None:
    """The signing domain: the domain of the ``From:`` address (A-label form), None when
    there is no single From: field with addresses of a single domain."""
    domains = {addr.rpartition("@")[2] for addr in from_addresses(message)}
    if len(domains) != 1:
        return None
    try:
        return valid_domain(domains.pop())
    except DkimKeyError:
        return None


def signing_refusal(mail: Mail, context: MailetContext) -> str | None:
    """Why ``mail`` must not get its From: domain's signature; None: it may.

    A signature says the domain stands behind the message, so it is given to a sender
    kittiwake knows: an authenticated user for the user's own addresses (the user, or
    an alias leading to the user: James's ``CanSendFrom``, :func:`senders_for`),
    whatever ``verifyIdentity`` let through (it does not look at From: for the null
    sender, nor at all when disabled); a client of ``authorizedAddresses``, trusted as
    for relaying; and the delivery reports made here (a mail made by a mailet, From:
    the postmaster). Anything else, such as mail from outside forwarded on, is not
    signed: its From: is whatever the outside wrote.
    """
    addresses = from_addresses(mail.message)
    try:
        canonical = [canonical_address(a) for a in addresses]
        if mail.auth_user is not None:
            allowed = senders_for(canonical_address(mail.auth_user), context.rewrite_table())
            if all(a in allowed for a in canonical):
                return None
            return f"From: is not an address of the authenticated user {mail.auth_user}"
    except InvalidName:
        return "From: is not a usable address"
    if mail.auth_network:
        return None
    if mail.attributes.get(SENT_BY_MAILET) and all(a == context.postmaster for a in canonical):
        return None
    return "neither authenticated nor from authorizedAddresses"


def default_fields(message: Message) -> list[str]:
    """:data:`SIGNED_FIELDS` that the message has, each once per occurrence and once
    more, so that no such field can be added without breaking the signature (RFC 6376
    8.15: a second From: or Subject: shown instead of the signed one)."""
    out: list[str] = []
    for name in SIGNED_FIELDS:
        n = message.count(name)
        if n:
            out.extend([name] * (n + 1))
    return out


@dataclass(frozen=True, slots=True)
class Template:
    """What a signature is made with, besides the key."""

    domain: str
    selector: str
    #: header fields to sign; None: :func:`default_fields`
    fields: tuple[str, ...] | None = None
    canonicalization: tuple[str, str] = ("relaxed", "relaxed")
    identity: str | None = None
    length: bool = False
    #: James's h= may name fields RFC 6376 says not to sign (Received): allowed there
    any_field: bool = False


def sign_message(data: bytes, key: DkimKey, template: Template, message: Message) -> bytes:
    """The DKIM-Signature field (folded, ending in CRLF) for ``data`` (in wire form).

    Raises:
        MessagingError: dkimpy refused the message or the key.
    """
    fields = template.fields if template.fields is not None else default_fields(message)
    signer = dkim.DKIM(
        data,
        signature_algorithm=key.algorithm.encode("ascii"),
        linesep=b"\r\n",
        logger=logging.getLogger("kittiwake.dkim"),
    )
    if template.any_field:
        signer.should_not_sign = {b"dkim-signature"}
    try:
        field: bytes = signer.sign(
            template.selector.encode("ascii"),
            template.domain.encode("ascii"),
            key.private,
            identity=template.identity.encode("utf-8") if template.identity else None,
            canonicalize=tuple(c.encode("ascii") for c in template.canonicalization),
            include_headers=[f.encode("ascii") for f in fields],
            length=template.length,
        )
    except dkim.DKIMException as exc:
        raise MessagingError(f"DKIM signing (d={template.domain}) failed: {exc}") from None
    return field if field.endswith(b"\r\n") else field + b"\r\n"


class DKIMSign(Mailet):
    """Signs the mail (see the module documentation)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        text = config.get("signatureTemplate")
        inline = config.get("privateKey")
        filepath = config.get("privateKeyFilepath")
        password = config.get("privateKeyPassword")
        # James's forceCRLF (default true) signs the CRLF form; kittiwake always sends
        # that form, so it always signs it: false would only make broken signatures
        if not config.get_bool("forceCRLF", True):
            raise MailetError(
                "<forceCRLF>false: kittiwake sends every message with CRLF line ends "
                "and signs that form (leave it out)"
            )
        self.fixed: tuple[DkimKey, Template] | None = None
        self.store: KeyStore | None = None
        if not text:
            if inline or filepath:
                raise MailetError(
                    "<privateKey>/<privateKeyFilepath> need a <signatureTemplate> (its d= and "
                    "s=); without all three the keys are DATA/dkim's (kittiwake dkim keygen)"
                )
            data_dir: Path | None = getattr(config.context, "data_dir", None)
            self.store = KeyStore((data_dir or Path(".")) / "dkim")
            return
        template, algorithm = _parse_template(text)
        if bool(inline) == bool(filepath):
            raise MailetError("<signatureTemplate> needs <privateKey> or <privateKeyFilepath>")
        if inline:
            data = inline.encode("utf-8")
        else:
            assert filepath is not None
            path = _key_path(filepath, getattr(config.context, "conf_dir", None))
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise MailetError(
                    f"<privateKeyFilepath>: cannot read {path}: {exc.strerror}"
                ) from None
        try:
            key = load_private_key(data, password.encode("utf-8") if password else None)
        except DkimKeyError as exc:
            element = "privateKey" if inline else "privateKeyFilepath"
            raise MailetError(f"<{element}>: {exc}") from None
        if algorithm is not None and algorithm != key.algorithm:
            raise MailetError(
                f"<signatureTemplate> a={algorithm} but the private key is {key.description}"
            )
        self.fixed = (key, template)

    def service(self, mail: Mail) -> None:
        if self.fixed is not None:
            signing = [self.fixed]
        else:
            assert self.store is not None
            domain = from_domain(mail.message)
            if domain is None:
                log.debug("%s: no single From: domain, not DKIM-signed", mail.name)
                return
            try:
                keys = self.store.keys(domain)
            except DkimKeyError as exc:
                raise MessagingError(f"DKIM key of {domain}: {exc}") from None
            if not keys:
                return
            refusal = signing_refusal(mail, self.context)
            if refusal is not None:
                log.warning("%s: not DKIM-signed for %s: %s", mail.name, domain, refusal)
                return
            signing = [(k, Template(domain, k.selector)) for k in keys]
        original = mail.message.as_bytes()
        data = wire_form(original)
        if data != original:
            mail.message = Message.from_bytes(data)  # what is signed is what is sent
        fields = [sign_message(data, k, t, mail.message) for k, t in signing]
        for field in reversed(fields):
            mail.message.prepend_raw_field(field)
        log.info(
            "%s: DKIM-signed %s",
            mail.name,
            ", ".join(f"d={t.domain} s={t.selector} ({k.description})" for k, t in signing),
        )


def _key_path(text: str, conf_dir: Path | None) -> Path:
    """James's ``file://conf/dkim.pem`` (``conf/`` is kittiwake's configuration
    directory), ``file:///etc/...``, or a plain path (relative: to the configuration
    directory)."""
    if text.startswith("classpath:"):
        raise MailetError(f"<privateKeyFilepath>: {text!r}: no classpath here, give a file")
    path = text.removeprefix("file://")
    if path.startswith("conf/") and conf_dir is not None:
        return conf_dir / path[len("conf/") :]
    candidate = Path(path)
    if candidate.is_absolute() or conf_dir is None:
        return candidate
    return conf_dir / candidate


def _parse_template(text: str) -> tuple[Template, str | None]:
    """James's ``signatureTemplate``: RFC 6376 tag=value pairs; ``d=`` and ``s=``
    required, ``bh=``, ``b=`` and ``t=`` filled in at signing.

    Raises:
        MailetError: a tag kittiwake cannot honour, or a bad value.
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq:
            raise MailetError(f"<signatureTemplate>: {part.strip()!r} is not tag=value")
        if name not in _TEMPLATE_TAGS:
            raise MailetError(f"<signatureTemplate>: tag {name}= is not supported")
        tags[name] = re.sub(r"\s+", "", value)
    if tags.get("v", "1") != "1":
        raise MailetError(f"<signatureTemplate>: v={tags['v']} (only v=1 exists)")
    if tags.get("q", "dns/txt") != "dns/txt":
        raise MailetError(f"<signatureTemplate>: q={tags['q']} (only dns/txt exists)")
    if "d" not in tags or "s" not in tags:
        raise MailetError("<signatureTemplate> needs d= (the domain) and s= (the selector)")
    try:
        domain, selector = valid_domain(tags["d"]), valid_selector(tags["s"])
    except DkimKeyError as exc:
        raise MailetError(f"<signatureTemplate>: {exc}") from None
    algorithm = tags.get("a") or None
    if algorithm not in (None, "rsa-sha256", "ed25519-sha256"):
        # RFC 8301 3.1: signers MUST NOT sign with rsa-sha1
        raise MailetError(f"<signatureTemplate>: a={algorithm} (rsa-sha256 or ed25519-sha256)")
    # RFC 6376 3.5: c= absent is simple/simple, "x" alone is x/simple
    header_c, _, body_c = tags.get("c", "simple").lower().partition("/")
    body_c = body_c or "simple"
    if header_c not in _CANON or body_c not in _CANON:
        raise MailetError(f"<signatureTemplate>: c={tags['c']} (simple or relaxed)")
    fields: tuple[str, ...] | None = None
    if tags.get("h"):
        fields = tuple(f.lower() for f in tags["h"].split(":") if f)
        if "from" not in fields:
            raise MailetError("<signatureTemplate>: h= must name from (RFC 6376 5.4)")
    identity = tags.get("i") or None
    if identity is not None and not identity.lower().endswith(domain):
        raise MailetError(f"<signatureTemplate>: i={identity} is not within d={domain}")
    template = Template(
        domain,
        selector,
        fields,
        (header_c, body_c),
        identity,
        length="l" in tags,
        any_field=True,
    )
    return template, algorithm


def signature_tags(field: bytes) -> dict[str, str]:
    """The tags of a DKIM-Signature field (for logs and tests)."""
    _, _, value = field.partition(b":")
    out: dict[str, str] = {}
    for part in value.decode("ascii", "replace").split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            out[name.strip()] = re.sub(r"\s+", "", tag_value)
    return out
