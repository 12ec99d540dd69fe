"""``kittiwake quota set|show USER [SIZE]``: per-user mailbox limits (Maildir++ quota,
``docs/quota.md``). ``cli.py`` adds the parser and dispatches here.

``quota set USER SIZE [--messages N]``: SIZE as in ``kittiwake.xml <quota storage>``
(``512M``, ``2G``; a plain number is KiB); ``0`` or ``unlimited``: no limit for this
user; ``default``: drop the override, the default applies again. ``quota show USER``
prints the limit, where it comes from and the usage (the ``maildirsize`` file,
rebuilt first if the specification's rules say so). A running server sees a change
within a quarter of a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kittiwake.config._errors import Invalid
from kittiwake.config._values import parse_size
from kittiwake.config.model import Config
from kittiwake.delivery.quota import Limit, format_size, mailbox_usage
from kittiwake.delivery.quota_limits import QuotaOverrides

__all__ = ["QuotaCommandError", "add_parser", "run_quota"]


class QuotaCommandError(Exception):
    """Printed without a traceback; exit status 1."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    quota = sub.add_parser("quota", help="mailbox size limits (Maildir++ quota)")
    quota_sub = quota.add_subparsers(dest="action", required=True)
    p = quota_sub.add_parser("set", parents=[common], help="set a user's limit")
    p.add_argument("name", help="the user (alice@example.com)")
    p.add_argument("size", help="512M, 2G, 0 or unlimited (no limit), default (drop)")
    p.add_argument("--messages", type=int, default=0, help="most messages (0: no limit)")
    p = quota_sub.add_parser("show", parents=[common], help="a user's limit and usage")
    p.add_argument("name")


def _limit(size: str, messages: int) -> Limit | None:
    if size.strip().lower() == "default":
        return None
    try:
        storage = parse_size(size)
    except Invalid as exc:
        raise QuotaCommandError(str(exc)) from None
    if messages < 0:
        raise QuotaCommandError("--messages must be 0 (no limit) or more")
    return Limit(storage, messages)


def run_quota(config: Config, data: Path, user: str, args: argparse.Namespace) -> int:
    """Run ``quota set`` or ``quota show`` for ``user`` (canonical, known)."""
    data.mkdir(parents=True, exist_ok=True)
    overrides = QuotaOverrides(data / "quota.db")
    try:
        opts = config.server
        default = Limit(opts.quota_storage, opts.quota_messages)
        if args.action == "set":
            overrides.set(user, _limit(args.size, args.messages))
        limit = overrides.get(user)
        source = "set for this user" if limit is not None else "the default (kittiwake.xml)"
        if limit is None:
            limit = default
        print(f"{user}: limit {_describe(limit)} ({source})")
        if args.action == "show":
            # neither set: the limits of the maildirsize header, if any (Dovecot's)
            own = limit if (limit or source.startswith("set")) else None
            try:
                used = mailbox_usage(str(data / "mail"), user, own, write=False)
            except OSError as exc:
                raise QuotaCommandError(f"cannot read the mailbox of {user}: {exc}") from None
            if used is not None:
                if own is None:
                    print(f"{user}: limit {_describe(used.limit)} (its maildirsize file)")
                print(f"{user}: used {_usage(used.storage, used.messages, used.limit)}")
    finally:
        overrides.close()
    return 0


def _describe(limit: Limit) -> str:
    if not limit:
        return "none"
    parts = []
    if limit.storage:
        parts.append(format_size(limit.storage))
    if limit.messages:
        parts.append(f"{limit.messages} messages")
    return ", ".join(parts)


def _usage(storage: int, messages: int, limit: Limit) -> str:
    text = f"{storage} bytes in {messages} messages"
    if limit.storage:
        text += f" ({100 * storage // limit.storage}% of {format_size(limit.storage)})"
    return text
