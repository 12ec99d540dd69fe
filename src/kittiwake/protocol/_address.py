"""MAIL and RCPT arguments: paths (RFC 5321 section 4.1.2) and ESMTP parameters.

Strict on purpose: what this module accepts is what the relay rule later reasons about,
so an address has exactly one reading. Source routes are stripped (RFC 5321 appendix C);
a local part holding ``@``, ``%`` or ``!`` is allowed by the grammar and handled by
policy, never reinterpreted here.
"""

from __future__ import annotations

import re

from . import _replies as R
from ._errors import CommandRefused

__all__ = ["ParsedPath", "parse_params", "parse_path"]

# RFC 5321 4.1.2: atext of RFC 5322 3.2.3; with SMTPUTF8, UTF-8 too (RFC 6531 3.3).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
# The UTF-8 range comes first: after _ATEXT's final "-" it would read as a range "~-\u0080".
_DOT_STRING = re.compile(rf"[\u0080-\U0010ffff{_ATEXT}]+(?:\.[\u0080-\U0010ffff{_ATEXT}]+)*")
# A domain: dot-separated labels of letters, digits and hyphens (U-labels allowed and
# checked later by IDNA when the domain is compared). No trailing dot (RFC 5321 4.1.2).
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ADDRESS_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]")
_QTEXT_SMTP = re.compile(r"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")  # RFC 6531 3.3

MAX_LOCAL_PART = 64  # octets, RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # octets, RFC 5321 4.5.3.1.2
MAX_PATH = 256  # octets with punctuation, RFC 5321 4.5.3.1.3


class ParsedPath:
    """A mailbox from a path: ``local`` and ``domain`` ("" for a bare postmaster)."""

    __slots__ = ("domain", "local")

    def __init__(self, local: str, domain: str) -> None:
        self.local = local
        self.domain = domain

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


def parse_path(
    text: str, *, brackets_required: bool, allow_null: bool, syntax_error: R.Reply
) -> tuple[ParsedPath | None, str]:
    """Split ``<path> rest`` into the mailbox and the parameter text.

    Args:
        text: what follows ``FROM:`` or ``TO:``, leading spaces allowed.
        brackets_required: James's addressBracketsEnforcement.
        allow_null: ``<>`` is the null sender (MAIL only).
        syntax_error: the reply for an address that does not parse.

    Returns:
        (None for the null path or the mailbox, the rest of the line).

    Raises:
        CommandRefused: with ``syntax_error`` or another 501.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end < 0:
            raise CommandRefused(syntax_error)
        inner, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise CommandRefused(syntax_error)
    elif brackets_required:
        raise CommandRefused(syntax_error)
    else:
        inner, _, rest = text.partition(" ")
    if len(inner.encode("utf-8")) + 2 > MAX_PATH:
        raise CommandRefused(R.PATH_TOO_LONG)
    if inner == "" or inner == "@":  # "<@>" is James's second spelling of the null path
        if not allow_null:
            raise CommandRefused(syntax_error)
        return None, rest
    if inner.startswith("@"):
        # A-d-l ":" Mailbox (RFC 5321 4.1.2): a source route, ignored (appendix C).
        route, colon, inner = inner.partition(":")
        if not colon or not all(
            hop.startswith("@") and _DOMAIN.fullmatch(hop[1:]) for hop in route.split(",")
        ):
            raise CommandRefused(syntax_error)
    return _parse_mailbox(inner, syntax_error), rest


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing the path, skipping quoted strings."""
    if '"' not in text:
        return text.find(">", 1)  # the usual path: no quoted local part to skip
    quoted = False
    i = 1
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return -1


def _parse_mailbox(text: str, syntax_error: R.Reply) -> ParsedPath:
    if text.startswith('"'):
        end = _closing_quote(text)
        if end < 0 or end + 1 >= len(text) or text[end + 1] != "@":
            raise CommandRefused(syntax_error)
        local, domain = text[: end + 1], text[end + 2 :]
        if not _QTEXT_SMTP.fullmatch(local[1:-1]):
            raise CommandRefused(syntax_error)
    else:
        local, at, domain = text.partition("@")
        if not at:
            # RFC 5321 4.1.1.3: <Postmaster> with no domain must be accepted (RCPT).
            if text.lower() == "postmaster":
                return ParsedPath(text, "")
            raise CommandRefused(syntax_error)
        if not _DOT_STRING.fullmatch(local):
            raise CommandRefused(syntax_error)
    if not (_DOMAIN.fullmatch(domain) or _ADDRESS_LITERAL.fullmatch(domain)):
        raise CommandRefused(syntax_error)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART or len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise CommandRefused(R.PATH_TOO_LONG)
    return ParsedPath(local, domain)


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def parse_params(text: str) -> dict[str, str | None]:
    """``KEY=VALUE KEY2`` into an upper-case-keyed dict (RFC 5321 4.1.2 esmtp-param).

    Raises:
        CommandRefused: 501 5.5.4 on a malformed or repeated parameter.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(key) or (eq and not _ESMTP_VALUE.fullmatch(value)):
            raise CommandRefused(R.BAD_PARAMETER_VALUE)
        key = key.upper()
        if key in params:
            raise CommandRefused(R.BAD_PARAMETER_VALUE)
        params[key] = value if eq else None
    return params


def decode_xtext(value: str) -> str:
    """RFC 3461 4: ``+XX`` hex escapes.

    Raises:
        CommandRefused: 501 5.5.4 on a malformed escape.
    """
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hexpart = value[i + 1 : i + 3]
            if len(hexpart) != 2 or not all(h in "0123456789ABCDEF" for h in hexpart):
                raise CommandRefused(R.BAD_PARAMETER_VALUE)
            out.append(chr(int(hexpart, 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)
