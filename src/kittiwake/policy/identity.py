"""Sender identity (James ``verifyIdentity``): who may use which sender address.

James's ``SenderAuthIdentifyVerificationHook``, checked at MAIL, again at each RCPT,
and on the message's ``From:`` header after DATA:

* ``strict`` (James's default; ``true`` is its old spelling): an authenticated user may
  use only an address of a local domain that is theirs (their own, an alias of theirs
  in the rewrite table, or the same in a domain aliased onto theirs); a session that
  neither authenticated nor comes from a trusted address may not use a local sender
  at all (``530``: authenticate first).
* ``relaxed``: the same, except that an unauthenticated client whose HELO/EHLO name is
  a domain with a dot (it looks like a mail server) may use a local sender; the
  ``From:`` header is checked only for authenticated sessions.
* ``disabled`` (``false``): no check. Relaying still needs AUTH or a trusted address.

Where kittiwake differs from James: a mismatch is ``550 5.7.1`` (James: ``503``, a
sequence error); the null sender ``<>`` is never checked, neither at MAIL nor on its
``From:`` header (bounces and MDNs, RFC 8098); a message with no ``From:`` address is
refused only from an authenticated session (James strict also refuses it from
anyone, which would turn an identity check into a header-syntax filter for inbound
mail).

Pure functions; the session gathers the facts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

__all__ = [
    "IdentityMode",
    "SenderFacts",
    "from_header_reply",
    "looks_like_mx",
    "parse_identity_mode",
    "sender_reply",
]


class IdentityMode(Enum):
    STRICT = "strict"
    RELAXED = "relaxed"
    DISABLED = "disabled"


_MODES = {
    "strict": IdentityMode.STRICT,
    "true": IdentityMode.STRICT,
    "relaxed": IdentityMode.RELAXED,
    "disabled": IdentityMode.DISABLED,
    "false": IdentityMode.DISABLED,
}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_identity_mode(text: str) -> IdentityMode:
    """``strict``/``true``, ``relaxed``, ``disabled``/``false``, any case.

    Raises:
        ValueError: anything else.
    """
    try:
        return _MODES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not strict, relaxed, disabled, true or false") from None


def looks_like_mx(helo: str | None) -> bool:
    """James's "MX heuristic" for ``relaxed``: the HELO/EHLO name is a valid domain
    name with at least one dot (Guava ``InternetDomainName.isValid``)."""
    if not helo or "." not in helo or len(helo) > 253:
        return False
    labels = helo.lower().rstrip(".").split(".")
    # Guava: the last label (a top-level domain) never starts with a digit, so an IPv4
    # address is not a domain name.
    return (
        len(labels) > 1
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1][0].isdigit()
    )


@dataclass(frozen=True, slots=True)
class SenderFacts:
    """What the identity rule needs to know about one sender address.

    Attributes:
        sender: the envelope sender; "" for the null sender.
        domain_is_local: its domain is a local domain (or a domain alias).
        authenticated_user: the SASL identity, or None.
        trusted: the client address is trusted (``authorizedAddresses``).
        owned: the authenticated user may send as ``sender`` (their address or alias).
        helo: the HELO/EHLO name, for ``relaxed``.
    """

    sender: str
    domain_is_local: bool
    authenticated_user: str | None
    trusted: bool
    owned: bool
    helo: str | None = None


def sender_reply(mode: IdentityMode, f: SenderFacts) -> Reply | None:
    """The envelope sender check, at MAIL and again at each RCPT. None = no objection."""
    if mode is IdentityMode.DISABLED or f.sender == "":
        return None
    if f.authenticated_user is not None:
        return None if f.domain_is_local and f.owned else R.NOT_YOUR_ADDRESS
    if f.trusted or not f.domain_is_local:
        return None
    if mode is IdentityMode.RELAXED and looks_like_mx(f.helo):
        return None
    return R.AUTH_REQUIRED


def from_header_reply(
    mode: IdentityMode,
    *,
    envelope_sender: str,
    authenticated_user: str | None,
    from_addresses: Sequence[str] | None,
    may_send_as: Callable[[str], bool],
) -> Reply | None:
    """The ``From:`` header check after DATA. None = no objection.

    Args:
        mode: the listener's ``verifyIdentity``.
        envelope_sender: "" for the null sender (never checked).
        authenticated_user: the SASL identity, or None (then nothing is checked:
            the header of inbound mail is not an identity claim made to us).
        from_addresses: the addresses of every ``From:`` field; None or empty when
            there is none (or none parses).
        may_send_as: address -> the user may send as it (local domain and owned).
    """
    if mode is IdentityMode.DISABLED or envelope_sender == "" or authenticated_user is None:
        return None
    if not from_addresses:
        return R.MISSING_FROM
    for address in from_addresses:
        if not may_send_as(address):
            return R.NOT_YOUR_ADDRESS
    return None
