"""SASL mechanisms PLAIN (RFC 4616) and LOGIN, sans I/O.

The protocol core reads the lines (``AUTH`` with its optional initial response, then
each continuation line); the session hands them to a mechanism object and sends back
what it answers: a :class:`Challenge` (``334``), :class:`Credentials` to check, or a
:class:`Failure` with its reply. Nothing here touches a socket, a store or a clock.

Line syntax (RFC 4954 4): an initial response is base64 or ``=`` (empty); a
continuation line is base64 (an empty line is an empty response) or ``*`` to cancel
(``501``). Base64 is decoded strictly: a character outside the alphabet, missing or
misplaced ``=`` padding is ``501 5.5.2``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Protocol

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

__all__ = [
    "MECHANISMS",
    "Challenge",
    "Credentials",
    "Failure",
    "LoginMechanism",
    "Mechanism",
    "PlainMechanism",
    "Step",
    "authorize",
    "challenge_reply",
    "decode",
    "new_mechanism",
]


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 base64(data)`` and wait for the next line."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client's claim, to be checked against the user store.

    Attributes:
        authzid: the identity to act as ("" = the same as ``authcid``).
        authcid: the user name whose password this is.
        password: the password (never logged).
    """

    authzid: str
    authcid: str
    password: str

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"Credentials(authzid={self.authzid!r}, authcid={self.authcid!r}, password=***)"


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange ends with ``reply`` (501 for syntax or ``*``)."""

    reply: Reply
    cancelled: bool = False


Step = Challenge | Credentials | Failure


def challenge_reply(step: Challenge) -> Reply:
    """The ``334`` line for a challenge; an empty one is ``334 `` (RFC 4954 4)."""
    return Reply(334, "", base64.b64encode(step.data).decode("ascii"))


def decode(line: str, *, initial: bool) -> bytes | Failure:
    """One client line of the exchange, decoded.

    Args:
        line: the line without CRLF.
        initial: it is the initial response of the ``AUTH`` command (``=`` = empty).
    """
    if line == "*" and not initial:
        return Failure(R.AUTH_CANCELLED, cancelled=True)
    if initial and line == "=":
        return b""
    if not line.isascii():
        return Failure(R.AUTH_BAD_BASE64)
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return Failure(R.AUTH_BAD_BASE64)


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if "\0" not in text else None


class Mechanism(Protocol):
    """One exchange of one mechanism: :meth:`start`, then :meth:`respond` per line."""

    name: str

    def start(self, initial: str | None) -> Step: ...

    def respond(self, line: str) -> Step: ...


class PlainMechanism:
    """PLAIN: ``[authzid] NUL authcid NUL passwd`` in one response (RFC 4616 2).

    As James does, ``authcid NUL passwd`` (no authzid) and one trailing NUL are
    accepted too.
    """

    name = "PLAIN"

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self._message(initial, initial=True)

    def respond(self, line: str) -> Step:
        return self._message(line, initial=False)

    def _message(self, line: str, *, initial: bool) -> Step:
        data = decode(line, initial=initial)
        if isinstance(data, Failure):
            return data
        parts = data.split(b"\0")
        if len(parts) == 4 and parts[3] == b"":
            parts = parts[:3]
        if len(parts) == 2:
            parts = [b"", *parts]
        if len(parts) != 3:
            return Failure(R.AUTH_BAD_RESPONSE)
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid is None or authcid is None or password is None or not authcid:
            return Failure(R.AUTH_BAD_RESPONSE)
        return Credentials(authzid, authcid, password)


class LoginMechanism:
    """LOGIN (draft-murchison-sasl-login): ``334 Username:``, ``334 Password:``; an
    initial response is the user name."""

    name = "LOGIN"
    USERNAME = Challenge(b"Username:")
    PASSWORD = Challenge(b"Password:")

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return self.USERNAME
        return self._username(initial, initial=True)

    def respond(self, line: str) -> Step:
        if self._user is None:
            return self._username(line, initial=False)
        data = decode(line, initial=False)
        if isinstance(data, Failure):
            return data
        password = _text(data)
        if password is None:
            return Failure(R.AUTH_BAD_RESPONSE)
        return Credentials("", self._user, password)

    def _username(self, line: str, *, initial: bool) -> Step:
        data = decode(line, initial=initial)
        if isinstance(data, Failure):
            return data
        user = _text(data)
        if not user:
            return Failure(R.AUTH_BAD_RESPONSE)
        self._user = user
        return self.PASSWORD


#: the mechanisms kittiwake has, in the order announced (James: LOGIN, PLAIN)
MECHANISMS = ("PLAIN", "LOGIN")


def new_mechanism(name: str) -> Mechanism | None:
    """A fresh exchange for mechanism ``name`` (any case), None if unknown."""
    upper = name.upper()
    if upper == "PLAIN":
        return PlainMechanism()
    if upper == "LOGIN":
        return LoginMechanism()
    return None


def authorize(authcid: str, authzid: str, administrators: frozenset[str]) -> str | None:
    """Whom a successfully authenticated ``authcid`` acts as (RFC 4616 2, RFC 4422 3.4.1).

    Args:
        authcid: the canonical user name whose password was right.
        authzid: the canonical identity asked for, "" for none.
        administrators: canonical user names that may act as anyone (James's
            ``administratorIds``).

    Returns:
        The identity of the session, or None: refused (``535 5.7.8``).
    """
    if not authzid or authzid == authcid:
        return authcid
    return authzid if authcid in administrators else None
