"""Events the core hands to the application.

Two kinds (``needs_reply``): a *decision* waits for the application's ``send(reply)``
before the core reads the next command (that is how pipelined commands get their
replies in order, RFC 2920 section 3.1); a *notice* tells the application something
happened that the core already answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "Auth",
    "AuthResponse",
    "ConnectionClosed",
    "DataRequested",
    "Event",
    "Hello",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "NeedData",
    "Quit",
    "RcptTo",
    "Reset",
    "StartTLS",
    "Unknown",
]


class Event:
    """Base class of everything ``ServerConnection.next_event`` returns."""

    __slots__ = ()
    needs_reply: ClassVar[bool] = False


# ---- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO, EHLO or LHLO. A positive reply resets any transaction (RFC 5321 4.1.4)."""

    needs_reply: ClassVar[bool] = True
    verb: str  # "HELO", "EHLO" or "LHLO"
    name: str  # the client's argument as sent (domain or address literal)

    @property
    def extended(self) -> bool:
        return self.verb != "HELO"


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM. ``address`` is "" for the null sender ``<>``; a source route is
    already stripped (RFC 5321 appendix C)."""

    needs_reply: ClassVar[bool] = True
    address: str
    params: dict[str, str | None] = field(default_factory=dict)
    size: int | None = None  # SIZE= (RFC 1870)
    body: str | None = None  # BODY=7BIT|8BITMIME (RFC 6152)
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531 3.4)
    auth: str | None = None  # AUTH= (RFC 4954 5), xtext-decoded; "<>" when unknown


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO. ``address`` is the mailbox (source route stripped); a bare
    ``<postmaster>`` comes as "postmaster" with no domain (RFC 5321 4.1.1.3)."""

    needs_reply: ClassVar[bool] = True
    address: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataRequested(Event):
    """DATA, or the first BDAT of a transaction. Reply ``START_DATA`` (354) to go on;
    for BDAT the core does not send the 354, it reads the chunk and acknowledges it."""

    needs_reply: ClassVar[bool] = True
    chunking: bool


@dataclass(frozen=True, slots=True)
class MessageComplete(Event):
    """The final dot or the last BDAT chunk: the message text is all delivered as
    ``MessageData``. SMTP takes one reply; LMTP one per accepted recipient, in order."""

    needs_reply: ClassVar[bool] = True
    size: int  # octets of message text after dot-unstuffing


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT; the connection closes after the reply (normally ``BYE``)."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS (RFC 3207), already checked by the core: offered on this listener, no
    argument, outside a transaction, TLS not active, not after AUTH. A positive reply
    (``READY_TLS``, 220) makes the core read nothing more: the adapter then runs the
    handshake and calls ``ServerConnection.tls_started()``; any octet the client sends
    before that closes the connection (``STARTTLS_INJECTION``). A refusal
    (``TLS_NOT_AVAILABLE``, 454) leaves the session as it was."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Auth(Event):
    """AUTH (RFC 4954 4), already checked by the core: the listener has AUTH, the session
    is greeted, outside a transaction and not yet authenticated, and the argument is a
    mechanism name and at most one initial response.

    Reply ``334 <challenge>`` to go on (the core then hands each client line over as
    :class:`AuthResponse`), ``235`` on success (the session is then authenticated), or
    any refusal. A ``421`` closes the connection."""

    needs_reply: ClassVar[bool] = True
    mechanism: str  # upper case
    initial_response: str | None  # base64 or "=" as sent; None when absent

    def __repr__(self) -> str:  # an initial response may hold a password: never logged
        shown = None if self.initial_response is None else "<redacted>"
        return f"Auth(mechanism={self.mechanism!r}, initial_response={shown})"


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """One client line of a SASL exchange after a ``334``: base64 text, "" or ``*``
    (cancel). Answered like :class:`Auth`. A line longer than the SASL line limit is
    refused by the core (``500 5.5.6``) and ends the exchange without this event."""

    needs_reply: ClassVar[bool] = True
    line: str

    def __repr__(self) -> str:
        return "AuthResponse(<redacted>)"


@dataclass(frozen=True, slots=True)
class Unknown(Event):
    """A verb the core does not implement (the application may know it)."""

    needs_reply: ClassVar[bool] = True
    verb: str
    argument: str


# ---- notices --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A piece of message text, dot-stuffing undone, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The message being received is given up; the core already sent ``reply``
    (too big, bare line ending, end of connection)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """RSET (or a new HELO/EHLO) ended any transaction; the core already answered."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """No more events: the client left, or the core closed the connection."""


@dataclass(frozen=True, slots=True)
class NeedData(Event):
    """Nothing more can happen until ``receive_data`` is called."""


NEED_DATA = NeedData()
CONNECTION_CLOSED = ConnectionClosed()
