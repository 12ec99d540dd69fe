"""The relay rule: kittiwake is never an open relay.

A recipient outside the local domains is accepted only from a session that may relay:
one that authenticated, or whose client address is trusted (``authorizedAddresses``).
Anyone else gets ``530 5.7.0`` when AUTH was announced to that client (so the client
knows to log in) and ``550 5.7.1`` otherwise (James's
``AbstractAuthRequiredToRelayRcptHook``, with RFC 4954's 5.7.0 for the 530).

The session runs this after the configured hooks, whatever they answered, so that no
hook's OK opens relaying. Address tricks, and where each one ends:

* upper case, U-labels, a trailing dot: the domain is compared in its canonical form
  (``policy.names``); a trailing dot does not even parse (``protocol._address``);
* several ``@`` outside quotes, or a source route: the core refuses the first and
  strips the second (RFC 5321 appendix C), so only the final mailbox is judged;
* the percent hack (``u%remote@local``), bang paths (``remote!u@local``) and quoted
  local parts holding ``@``, ``%`` or ``!``: kittiwake never routes on the local part,
  and from a session that may not relay such a recipient is refused outright, unless
  it is itself a known local mailbox (Postfix's ``allow_untrusted_routing = no``);
* an address literal (``u@[192.0.2.1]``): never local (no ``autodetectIP``), refused
  for everyone (a literal of this host would loop back).

Pure functions of facts the session gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

from .recipients import RcptFacts, rcpt_reply

__all__ = ["ROUTING_CHARACTERS", "SessionTrust", "recipient_reply", "relay_reply"]

#: characters that would route on the local part in some MTA (RFC 5321 appendix C, 3.6.2)
ROUTING_CHARACTERS = frozenset("@%!")


@dataclass(frozen=True, slots=True)
class SessionTrust:
    """What the relay rule needs to know about the session.

    Attributes:
        relay_allowed: the session authenticated, or its client address is trusted.
        auth_announced: AUTH was (or would be) announced to this client in EHLO.
    """

    relay_allowed: bool
    auth_announced: bool


def _denied(trust: SessionTrust) -> Reply:
    return R.AUTH_REQUIRED if trust.auth_announced else R.RELAY_DENIED


def relay_reply(f: RcptFacts, trust: SessionTrust) -> Reply | None:
    """None = the relay rule does not object (the recipient is local, or may be relayed).

    Args:
        f: the recipient, with its domain canonical (see :class:`RcptFacts`).
        trust: the session.
    """
    if f.domain == "":
        return None  # a bare <postmaster>: this host's postmaster
    routed = not ROUTING_CHARACTERS.isdisjoint(f.local_part)
    if routed and not trust.relay_allowed and not (f.domain_is_local and f.user_exists):
        return _denied(trust)
    if f.domain is not None and f.domain_is_local:
        return None
    if f.literal:
        return R.LITERAL_NOT_RELAYED if trust.relay_allowed else _denied(trust)
    if not trust.relay_allowed:
        return _denied(trust)
    if f.domain is None:
        return R.BAD_RECIPIENT_SYNTAX  # no canonical form: nowhere to relay it to
    return None


def recipient_reply(f: RcptFacts, trust: SessionTrust) -> Reply | None:
    """The whole RCPT rule: relaying first, then, for a local recipient, whether it can
    take mail (:func:`kittiwake.policy.recipients.rcpt_reply`). None = accept."""
    refusal = relay_reply(f, trust)
    if refusal is not None:
        return refusal
    if f.domain == "" or f.domain_is_local:
        return rcpt_reply(f)
    return None
