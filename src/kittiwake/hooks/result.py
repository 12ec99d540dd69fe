"""The James hook contract: every hook answers OK, DENY, DENYSOFT or DECLINED.

* DECLINED: no opinion; the next hook is asked. When all decline, the core command runs.
* OK: the hooks stop and the core command runs (its reply is used). An OK never skips
  kittiwake's mandatory rules (relay, unknown local user): a hook can refuse more,
  never open relaying (deliberately safer than James).
* DENY: refused, 554 5.7.1 unless the hook gives its own reply.
* DENYSOFT: refused for now, 451 4.7.1 unless the hook gives its own reply.
Any of them may ask for the connection to be closed after the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R

__all__ = ["DECLINED", "DENY", "DENYSOFT", "OK", "Action", "HookResult"]


class Action(Enum):
    OK = "OK"
    DENY = "DENY"
    DENYSOFT = "DENYSOFT"
    DECLINED = "DECLINED"


@dataclass(frozen=True, slots=True)
class HookResult:
    action: Action
    reply: Reply | None = None
    disconnect: bool = False

    def refusal(self) -> Reply:
        """The reply for a DENY or DENYSOFT, the hook's own or the default."""
        if self.reply is not None:
            return self.reply
        return R.DENY if self.action is Action.DENY else R.DENYSOFT


OK = HookResult(Action.OK)
DENY = HookResult(Action.DENY)
DENYSOFT = HookResult(Action.DENYSOFT)
DECLINED = HookResult(Action.DECLINED)
