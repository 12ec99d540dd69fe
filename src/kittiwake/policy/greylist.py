"""Greylisting's rule: what a retry of a triplet gets, given what was remembered of it.

A triplet is (client network, sender, recipient) (see
:mod:`kittiwake.hooks.handlers.greylist`). :func:`greylist_step` is the whole lifecycle;
a :class:`~kittiwake.storage.base.GreylistStore` runs it inside one transaction and
writes back what it returns, so every store (SQLite today, PostgreSQL later) decides
alike.

Pure: no I/O, no clock (``now`` is given).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["GreylistEntry", "GreylistTimes", "GreylistVerdict", "Triplet", "greylist_step"]


class Triplet(NamedTuple):
    """The key: network (``192.0.2.0/24``), sender, recipient (both lower-cased)."""

    network: str
    sender: str
    recipient: str


@dataclass(frozen=True, slots=True)
class GreylistTimes:
    """James's options, in seconds."""

    #: a retry sooner than this after the first attempt is refused again
    temp_block: float
    #: a triplet that passed stays whitelisted this long after it was last seen
    whitelist_life: float
    #: a triplet never retried is forgotten this long after it was first seen
    unseen_life: float


@dataclass(frozen=True, slots=True)
class GreylistEntry:
    """What is remembered of one triplet."""

    first_seen: float
    last_seen: float
    #: times the triplet was accepted (0: still greylisted)
    passed: int


class GreylistVerdict(enum.Enum):
    PASS = "pass"  # accepted (whitelisted, or retried late enough)
    GREYLISTED = "greylisted"  # new (or forgotten): refused for now, remembered
    TOO_SOON = "too soon"  # retried before temp_block: refused again


def greylist_step(
    entry: GreylistEntry | None, now: float, times: GreylistTimes
) -> tuple[GreylistVerdict, GreylistEntry | None]:
    """The verdict for a triplet seen at ``now``, and what to remember of it.

    Returns:
        ``(verdict, entry to store)``; None as the entry: keep what is stored.
    """
    if entry is not None:
        expired = (
            now - entry.last_seen > times.whitelist_life
            if entry.passed
            else now - entry.first_seen > times.unseen_life
        )
        if not expired:
            if not entry.passed and now < entry.first_seen + times.temp_block:
                return GreylistVerdict.TOO_SOON, None
            return GreylistVerdict.PASS, GreylistEntry(entry.first_seen, now, entry.passed + 1)
    return GreylistVerdict.GREYLISTED, GreylistEntry(now, now, 0)
