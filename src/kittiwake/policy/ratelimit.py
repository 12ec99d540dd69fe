"""Rate limits' arithmetic: the sliding window and the AUTH failure budget.

A limit of ``limit`` events per ``period`` seconds is counted in fixed windows
(``window_of``); the sliding window ending now is estimated from the current window and
the previous one, weighted by how much of it still falls in the sliding window (the
estimate Cloudflare and nginx use): two counters per key, no per-event rows. The stores
(:class:`~kittiwake.storage.base.RateLimitStore`) apply it inside one transaction.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WindowLimit", "admits", "over_budget", "window_of"]


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """At most ``limit`` events per ``period`` seconds under ``key``."""

    #: what is counted, e.g. ``smtp/messagesPerHour:192.0.2.7``
    key: str
    limit: int
    period: float


def window_of(now: float, period: float) -> int:
    """The number of the fixed window ``now`` falls in."""
    return int(now // period)


def admits(limit: WindowLimit, previous: int, current: int, now: float) -> bool:
    """One more event stays within ``limit``, given the counts of the previous and the
    current fixed window."""
    elapsed = (now % limit.period) / limit.period
    estimate = previous * (1.0 - elapsed) + current
    return not estimate + 1 > limit.limit


def over_budget(failures_in_window: int, limit: int) -> bool:
    """The address has used up its AUTH failures (``limit`` 0 = no budget)."""
    return limit > 0 and failures_in_window >= limit
