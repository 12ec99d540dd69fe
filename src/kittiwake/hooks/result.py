"""The James hook contract: every hook answers OK, DENY, DENYSOFT or DECLINED.

* DECLINED: no opinion; the next hook is asked. When all decline, the core command runs.
* OK: the hooks stop and the core command runs (its reply is used). An OK never skips
  kittiwake's mandatory rules (relay, unknown local user): a hook can refuse more,
  never open relaying (deliberately safer than James).
* DENY: refused, 554 5.7.1 unless the hook gives its own reply.
* DENYSOFT: refused for now, 451 4.7.1 unless the hook gives its own reply.

Any of them may ask for the connection to be closed after the reply (``disconnect``).
A hook that raises, or runs past the chain's time limit, counts as DENYSOFT with
``451 4.3.0`` (:data:`HOOK_FAILED`), and is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

__all__ = [
    "CONNECT_FAILED",
    "DECLINED",
    "DENY",
    "DENYSOFT",
    "HOOK_FAILED",
    "OK",
    "Action",
    "HookResult",
]


class Action(Enum):
    OK = "OK"
    DENY = "DENY"
    DENYSOFT = "DENYSOFT"
    DECLINED = "DECLINED"


@dataclass(frozen=True, slots=True)
class HookResult:
    """A hook's answer.

    Attributes:
        action: OK, DENY, DENYSOFT or DECLINED.
        reply: the hook's own reply for a DENY or DENYSOFT (code, enhanced status,
            text); None for the default. Ignored for OK and DECLINED: the core's reply
            is used.
        disconnect: close the connection after the reply.
    """

    action: Action
    reply: Reply | None = None
    disconnect: bool = False

    @property
    def refused(self) -> bool:
        return self.action is Action.DENY or self.action is Action.DENYSOFT

    def refusal(self) -> Reply:
        """The reply for a DENY or DENYSOFT, the hook's own or the default."""
        if self.reply is not None:
            return self.reply
        return R.DENY if self.action is Action.DENY else R.DENYSOFT

    @classmethod
    def deny(cls, reply: Reply | None = None, *, disconnect: bool = False) -> HookResult:
        return cls(Action.DENY, reply, disconnect)

    @classmethod
    def denysoft(cls, reply: Reply | None = None, *, disconnect: bool = False) -> HookResult:
        return cls(Action.DENYSOFT, reply, disconnect)


OK = HookResult(Action.OK)
DENY = HookResult(Action.DENY)
DENYSOFT = HookResult(Action.DENYSOFT)
DECLINED = HookResult(Action.DECLINED)
#: what a hook that raised or timed out counts as
HOOK_FAILED = HookResult(Action.DENYSOFT, R.LOCAL_ERROR)
#: a connect hook failed: the connection closes, so 421 rather than 451 (RFC 5321 3.8)
CONNECT_FAILED = Reply(421, "4.3.0", "Local error in processing, closing connection")
