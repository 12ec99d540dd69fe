"""The chain runner: asks a listener's hooks in order, with James's semantics.

For each hook point (``on_rcpt`` ...) only the hooks that implement it are asked. The
first answer other than DECLINED ends the round. Every call is timed: a hook that
raises, returns something that is not a :class:`HookResult`, or runs past the time
limit counts as ``HOOK_FAILED`` (DENYSOFT, ``451 4.3.0``) and is logged with its name;
a slow one is logged as a warning. Per hook and point, calls, answers and time are
counted in :attr:`Chain.stats` (James's HookResultJMXMonitor).

The runner never decides policy itself: the session applies the answer, then runs
kittiwake's mandatory rules whatever the hooks said.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import types
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api import Hook, Services, SessionInfo
from .result import DECLINED, HOOK_FAILED, Action, HookResult

__all__ = ["HOOK_POINTS", "Chain", "HookStats"]

log = logging.getLogger("kittiwake.hooks")

#: the methods the session calls (on_disconnect answers nothing)
HOOK_POINTS = (
    "on_connect",
    "on_helo",
    "on_mail",
    "on_mail_parameter",
    "on_rcpt",
    "on_message",
    "on_auth",
    "on_quit",
    "on_unknown",
    "on_disconnect",
)
#: seconds a hook may take before it counts as failed (James asks for "within 30 s")
DEFAULT_TIMEOUT = 30.0
#: seconds after which a hook's call is logged as slow
DEFAULT_SLOW = 2.0
_ACTION_NAMES = {action: action.value for action in Action}


@dataclass(slots=True)
class HookStats:
    """What one hook did at one hook point."""

    calls: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)


def hook_name(hook: object) -> str:
    name = getattr(hook, "hook_name", None)
    return name if isinstance(name, str) else type(hook).__name__


def _implements(hook: object, method: str) -> bool:
    impl = getattr(type(hook), method, None)
    if impl is None:
        return False
    return not isinstance(hook, Hook) or impl is not getattr(Hook, method)


class Chain:
    """One listener's hooks, in order.

    Args:
        hooks: configured hooks first (the loader puts kittiwake's own after them).
        timeout: seconds one hook call may take.
        slow: seconds after which a call is logged as a warning.
    """

    def __init__(
        self,
        hooks: Sequence[object] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        slow: float = DEFAULT_SLOW,
    ) -> None:
        self.hooks = tuple(hooks)
        self.timeout = timeout
        self.slow = slow
        self._by_point = {p: tuple(h for h in self.hooks if _implements(h, p)) for p in HOOK_POINTS}
        self.mail_parameters: frozenset[str] = frozenset(
            name.upper() for h in self.hooks for name in getattr(h, "mail_parameters", ())
        )
        self.stats: dict[tuple[str, str], HookStats] = {}
        self._names = {id(h): hook_name(h) for h in self.hooks}

    def wants(self, point: str) -> bool:
        """Some hook implements ``point``."""
        return bool(self._by_point[point])

    async def start(self, services: Services) -> None:
        """Start every hook, in order (a failure stops the server's start)."""
        for hook in self.hooks:
            start = getattr(hook, "start", None)
            if start is not None:
                await start(services)

    async def stop(self) -> None:
        """Stop every hook, in reverse order; failures are logged, not raised."""
        for hook in reversed(self.hooks):
            stop = getattr(hook, "stop", None)
            if stop is None:
                continue
            try:
                await stop()
            except Exception:
                log.exception("hook %s: stop failed", hook_name(hook))

    async def run(self, point: str, session: SessionInfo, *args: Any) -> HookResult:
        """Ask the hooks implementing ``point``; the first non-DECLINED answer wins.

        Returns:
            DECLINED when every hook declined (or none implements the point).
        """
        hooks = self._by_point[point]
        if not hooks:
            return DECLINED
        for hook in hooks:
            result = await self._call(hook, point, session, args)
            if result.action is not Action.DECLINED:
                return result
        return DECLINED

    async def run_mail_parameter(
        self, session: SessionInfo, name: str, value: str | None
    ) -> HookResult:
        """``on_mail_parameter`` of the hooks that declared ``name``."""
        for hook in self._by_point["on_mail_parameter"]:
            if name not in {n.upper() for n in getattr(hook, "mail_parameters", ())}:
                continue
            result = await self._call(hook, "on_mail_parameter", session, (name, value))
            if result.action is not Action.DECLINED:
                return result
        return DECLINED

    async def disconnected(self, session: SessionInfo) -> None:
        """Tell every hook the connection ended; failures are logged, never raised."""
        for hook in self._by_point["on_disconnect"]:
            await self._call(hook, "on_disconnect", session, ())

    async def _call(
        self, hook: object, point: str, session: SessionInfo, args: tuple[Any, ...]
    ) -> HookResult:
        name = self._names.get(id(hook)) or hook_name(hook)
        started = time.perf_counter()
        try:
            call = getattr(hook, point)(session, *args)
            if not inspect.iscoroutine(call):  # some other awaitable
                async with asyncio.timeout(self.timeout):
                    result = await call
            else:
                # Most hooks answer without waiting; only one that waits needs the
                # timer (a timer per call costs more than the hook: ~7 us).
                try:
                    waiting = call.send(None)
                except StopIteration as done:
                    result = done.value
                else:
                    async with asyncio.timeout(self.timeout):
                        result = await _resume(call, waiting)
        except TimeoutError:
            log.error(
                "%s: hook %s.%s took longer than %gs: 451 4.3.0",
                session.session_id,
                name,
                point,
                self.timeout,
            )
            result = HOOK_FAILED
        except Exception:
            log.exception("%s: hook %s.%s failed: 451 4.3.0", session.session_id, name, point)
            result = HOOK_FAILED
        else:
            if point == "on_disconnect":
                result = DECLINED
            elif not isinstance(result, HookResult):
                log.error(
                    "%s: hook %s.%s returned %r, not a HookResult: 451 4.3.0",
                    session.session_id,
                    name,
                    point,
                    result,
                )
                result = HOOK_FAILED
        elapsed = time.perf_counter() - started
        self._count(name, point, result, elapsed)
        if elapsed >= self.slow:
            log.warning("%s: hook %s.%s took %.3fs", session.session_id, name, point, elapsed)
        if result.action is not Action.DECLINED:
            log.info(
                "%s: hook %s.%s from [%s]: %s%s%s",
                session.session_id,
                name,
                point,
                session.client_ip,
                result.action.value,
                f" {result.refusal()}" if result.refused else "",
                ", disconnect" if result.disconnect else "",
            )
        return result

    def _count(self, name: str, point: str, result: HookResult, elapsed: float) -> None:
        stats = self.stats.get((name, point))
        if stats is None:
            stats = self.stats[(name, point)] = HookStats()
        stats.calls += 1
        stats.seconds += elapsed
        if elapsed > stats.slowest:
            stats.slowest = elapsed
        key = _ACTION_NAMES[result.action]
        stats.answers[key] = stats.answers.get(key, 0) + 1


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine already started with ``send(None)``, which is waiting on
    ``waiting``: what ``await`` would have done had it been awaited from the start."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation (the timeout) goes into the hook
            try:
                waiting = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as done:
                return done.value
