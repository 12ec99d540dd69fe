"""Connection handlers: MaxUnknownCmdHandler, MaxConnectionLifespanHandler."""

from __future__ import annotations

import asyncio

from kittiwake.protocol import Reply

from ..api import Hook, SessionInfo
from ..options import HandlerOptions
from ..result import DECLINED, HookResult

__all__ = ["MaxConnectionLifespanHandler", "MaxUnknownCmdHandler"]

#: James MaxUnknownCmdHandler's reply (then the connection closes)
TOO_MANY_UNKNOWN = Reply(521, "5.5.1", "Closing connection as too many unknown commands received")
#: MaxConnectionLifespanHandler (James closes without a word; RFC 5321 3.8 asks for 421)
LIFESPAN_OVER = Reply(421, "4.4.2", "Connection time limit reached, closing connection")


class MaxUnknownCmdHandler(Hook):
    """James's ``fastfail.MaxUnknownCmdHandler``: after more than
    ``maxUnknownCmdCount`` (5) unknown commands, ``521`` and the connection closes.

    James counts per transaction (RSET starts again); kittiwake counts per connection,
    so that a client cannot reset the count.
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.max = options.integer("maxUnknownCmdCount", 5, low=0)

    async def on_unknown(self, session: SessionInfo, verb: str) -> HookResult:
        key = (MaxUnknownCmdHandler, id(self))
        count = session.state.get(key, 0) + 1
        session.state[key] = count
        if count > self.max:
            return HookResult.deny(TOO_MANY_UNKNOWN, disconnect=True)
        return DECLINED


class MaxConnectionLifespanHandler(Hook):
    """James's ``netty.MaxConnectionLifespanHandler``: the connection is closed
    ``duration`` after it was opened, whatever it is doing (forces clients to
    reconnect and authenticate again). ``duration`` is required; a plain number is
    milliseconds, as James's DurationParser reads it (``30s``, ``1h`` ...)."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.duration = options.duration("duration", unit="ms", low=0.001)

    async def on_connect(self, session: SessionInfo) -> HookResult:
        loop = asyncio.get_running_loop()
        session.state[(MaxConnectionLifespanHandler, id(self))] = loop.call_later(
            self.duration, session.close, LIFESPAN_OVER
        )
        return DECLINED

    async def on_disconnect(self, session: SessionInfo) -> None:
        handle = session.state.pop((MaxConnectionLifespanHandler, id(self)), None)
        if handle is not None:
            handle.cancel()
