"""The handler chain: James's hook contract, the provided handlers, your own hooks.

Everything a hook needs is importable from here (see ``docs/hooks.md``)::

    from kittiwake.hooks import DECLINED, Hook, HookResult, SessionInfo
"""

from .api import Hook, Message, Services, SessionInfo
from .options import HandlerOptions, OptionError
from .result import DECLINED, DENY, DENYSOFT, OK, Action, HookResult

__all__ = [
    "DECLINED",
    "DENY",
    "DENYSOFT",
    "OK",
    "Action",
    "HandlerOptions",
    "Hook",
    "HookResult",
    "Message",
    "OptionError",
    "Services",
    "SessionInfo",
]
