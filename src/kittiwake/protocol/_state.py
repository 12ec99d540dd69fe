"""The session state machine.

Theory of operation
-------------------
The state moves only when the application sends a *positive* reply to a decision
(2xx, or 354 for DATA): a refused MAIL leaves the session where it was. The table
below is the whole sequencing rule; a (state, verb) pair missing from it is answered
503 5.5.1 by the core without asking the application (RFC 5321 4.1.4, 4.3.2).

Contested cases, decided here:
* MAIL inside a transaction is 503 ("Sender already specified"), as Postfix and
  aiosmtpd do; chasquid silently resets instead. A client that wants a new
  transaction sends RSET (RFC 5321 4.1.4 "MAIL ... MUST NOT be sent in a transaction").
* HELO/EHLO/LHLO in any state ends the transaction and starts afresh (RFC 5321 4.1.4).
* BDAT and DATA do not mix within one transaction (RFC 3030 3: 503).
* STARTTLS only outside a transaction, after HELO/EHLO/LHLO (Postfix and chasquid do
  the same). After its 220 the session waits in TLS_HANDSHAKE, reading nothing; the
  handshake (``ServerConnection.tls_started``) brings it back to CONNECTED with
  everything forgotten, so the client must EHLO again (RFC 3207 4.2).
* AUTH only outside a transaction, after HELO/EHLO, once per session (RFC 4954 4: 503
  otherwise). A ``334`` reply puts the session in AUTH, where each line is a SASL
  response and not a command; any other reply brings it back to GREETED.
"""

from __future__ import annotations

from enum import Enum, auto

__all__ = ["TRANSITIONS", "State", "next_state"]


class State(Enum):
    CONNECTED = auto()  # greeting sent, no HELO/EHLO/LHLO yet
    GREETED = auto()  # no transaction open
    MAIL = auto()  # MAIL FROM accepted
    RCPT = auto()  # at least one RCPT accepted
    DATA = auto()  # reading dot-stuffed text
    CHUNKING = auto()  # a BDAT transaction: between or inside chunks
    TLS_HANDSHAKE = auto()  # STARTTLS answered 220: no command is read until the handshake
    AUTH = auto()  # a SASL exchange after 334: each line is a response, not a command
    CLOSED = auto()

    # Enum's own __hash__ is Python code (hash of the name), run on every lookup in
    # TRANSITIONS; members are singletons, so the identity hash (C) is equivalent.
    __hash__ = object.__hash__


# (state, verb) -> state after a positive reply. "MAIL!" is MAIL before HELO where
# heloEhloEnforcement is off; see ServerConnection._sequence.
TRANSITIONS: dict[tuple[State, str], State] = {
    **{
        (s, v): State.GREETED
        for s in (State.CONNECTED, State.GREETED, State.MAIL, State.RCPT, State.CHUNKING)
        for v in ("HELO", "EHLO", "LHLO")
    },
    (State.GREETED, "MAIL"): State.MAIL,
    (State.CONNECTED, "MAIL!"): State.MAIL,
    (State.MAIL, "RCPT"): State.RCPT,
    (State.RCPT, "RCPT"): State.RCPT,
    (State.RCPT, "DATA"): State.DATA,
    (State.RCPT, "BDAT"): State.CHUNKING,
    (State.CHUNKING, "BDAT"): State.CHUNKING,
    (State.GREETED, "STARTTLS"): State.TLS_HANDSHAKE,
    (State.GREETED, "AUTH"): State.GREETED,  # 334 leads to AUTH, see ServerConnection.send
}


def next_state(state: State, verb: str) -> State | None:
    """The state a positive reply leads to, or None when the verb is out of sequence."""
    return TRANSITIONS.get((state, verb))
