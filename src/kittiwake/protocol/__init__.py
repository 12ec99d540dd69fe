"""The SMTP/LMTP protocol core: bytes in, events out; replies in, bytes out. No I/O."""

from . import _replies as replies
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Auth,
    AuthResponse,
    ConnectionClosed,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    NeedData,
    Quit,
    RcptTo,
    Reset,
    StartTLS,
    Unknown,
)
from ._replies import Reply
from ._state import State
from .connection import CoreSettings, Mode, ServerConnection

__all__ = [
    "CONNECTION_CLOSED",
    "NEED_DATA",
    "Auth",
    "AuthResponse",
    "ConnectionClosed",
    "CoreSettings",
    "DataRequested",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "Mode",
    "NeedData",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "Reset",
    "ServerConnection",
    "StartTLS",
    "State",
    "Unknown",
    "replies",
]
