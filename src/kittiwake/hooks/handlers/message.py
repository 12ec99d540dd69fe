"""Message handlers: EnforceHeaderLimitationsMessageHook, SetMimeHeaderHandler."""

from __future__ import annotations

from kittiwake.protocol import Reply

from ..api import HEADER_LIMIT, Hook, Message, SessionInfo
from ..options import HandlerOptions, OptionError
from ..result import DECLINED, HookResult

__all__ = ["EnforceHeaderLimitationsMessageHook", "SetMimeHeaderHandler"]

#: James's replies (DENYSOFT with a 552 code, as James sends them)
TOO_MANY_LINES = Reply(552, "5.3.4", "Header Lines are too many")
TOO_LARGE = Reply(552, "5.3.4", "Header size is too large")


class EnforceHeaderLimitationsMessageHook(Hook):
    """James's ``EnforceHeaderLimitationsMessageHook``: a message whose header has more
    than ``maxLines`` fields (500) or more than ``maxSize`` bytes (64 KiB; a plain
    number is KiB, units as ``maxmessagesize``) is refused with ``552 5.3.4``.

    James's ``init`` swaps the two options (``maxLines`` lands in the size and the other
    way round); kittiwake reads each where its name says.
    """

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        self.max_lines = options.integer("maxLines", 500, low=1)
        self.max_size = options.size("maxSize", 64 * 1024, unit="k")
        if not 0 < self.max_size <= HEADER_LIMIT:
            raise OptionError("<maxSize>", f"must be between 1 byte and {HEADER_LIMIT // 1024}K")

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        if not message.header_complete or len(message.header) > self.max_size:
            return HookResult.denysoft(TOO_LARGE)
        if len(message.header_fields()) > self.max_lines:
            return HookResult.denysoft(TOO_MANY_LINES)
        return DECLINED


class SetMimeHeaderHandler(Hook):
    """James's ``SetMimeHeaderHandler``: sets the header field ``headername`` to
    ``headervalue`` in every message (an existing field of that name is replaced).
    Both options are required."""

    def __init__(self, options: HandlerOptions) -> None:
        super().__init__(options)
        name = options.text("headername", required=True)
        value = options.text("headervalue", required=True)
        assert name is not None and value is not None
        if not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
            raise OptionError("<headername>", f"{name!r} is not a header field name")
        self.name, self.value = name, value

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        message.set_header(self.name, self.value)
        return DECLINED
