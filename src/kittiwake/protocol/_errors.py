"""Errors of the protocol core (as in h11 and wsproto: the error carries its reply)."""

from __future__ import annotations

from ._replies import LOCAL_ERROR, Reply

__all__ = ["CommandRefused", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base: ``reply`` is what the client gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class RemoteProtocolError(ProtocolError):
    """The peer broke SMTP beyond repair: send ``reply`` and close the connection."""


class LocalProtocolError(ProtocolError):
    """The application misused the core (a bug): fail loudly."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.reply = LOCAL_ERROR


class CommandRefused(ProtocolError):
    """Internal: one command is refused with ``reply``; the session goes on."""
