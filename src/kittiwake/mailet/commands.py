"""The mailet container's management commands, added to ``kittiwake`` by ``cli.py``:

* ``kittiwake repo list [NAME]`` / ``show NAME KEY`` / ``delete NAME [KEY|--all]`` /
  ``reprocess NAME [KEY|--all] [--processor P]``: mail repositories under DATA.
  Reprocessing puts the mail back into the spool, to start in processor ``P`` (default:
  the state it was stored in), and then deletes it from the repository; a running
  server picks it up within its sweep interval (10 s).
* (``kittiwake alias ...``, the rewrite table the ``RecipientRewriteTable`` mailet
  reads, is in ``cli.py``.)
* ``kittiwake sendmail``: local submission (:mod:`kittiwake.mailet.sendmail`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from kittiwake.mailet.repository import RepositoryStore

__all__ = ["CommandError", "add_parsers", "run_repo"]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``repo`` and ``sendmail`` to the ``kittiwake`` parser."""
    repo = sub.add_parser("repo", help="mail repositories (error, address-error, ...)")
    repo_sub = repo.add_subparsers(dest="action", required=True)
    p = repo_sub.add_parser("list", parents=[common], help="repositories, or the mails of one")
    p.add_argument("name", nargs="?")
    p = repo_sub.add_parser("show", parents=[common], help="print a stored mail")
    p.add_argument("name")
    p.add_argument("key")
    for action in ("delete", "reprocess"):
        p = repo_sub.add_parser(action, parents=[common])
        p.add_argument("name")
        p.add_argument("key", nargs="?")
        p.add_argument("--all", action="store_true", help="every mail of the repository")
        if action == "reprocess":
            p.add_argument("--processor", help="start in this processor (default: its state)")

    send = sub.add_parser(
        "sendmail", parents=[common], help="submit a message from standard input (sendmail -t)"
    )
    from kittiwake.mailet.sendmail import add_arguments

    add_arguments(send)


class CommandError(Exception):
    """Printed without a traceback; exit status 1."""


def run_repo(data: Path, args: argparse.Namespace) -> int:
    store = RepositoryStore(data / "repositories")
    if args.action == "list":
        if not args.name:
            for name in store.names():
                print(f"{name}\t{len(store.get(name))}")
            return 0
        for m in store.get(args.name):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.stored_at))
            print(
                f"{m.key}\t{when}\tfrom=<{m.sender or ''}>\tto={','.join(m.recipients)}\t"
                f"state={m.state}\tsize={m.size}\t{m.error_message or ''}"
            )
        return 0
    repo = store.get(args.name)
    if args.action == "show":
        try:
            info = repo.info(args.key)
            data_bytes = repo.message_bytes(args.key)
        except KeyError:
            raise CommandError(f"no mail {args.key} in repository {args.name}") from None
        print(f"X-Kittiwake-Envelope-From: <{info.sender or ''}>")
        print(f"X-Kittiwake-Envelope-To: {', '.join(info.recipients)}")
        print(f"X-Kittiwake-State: {info.state}")
        if info.error_message:
            print(f"X-Kittiwake-Error: {info.error_message}")
        sys.stdout.flush()
        sys.stdout.buffer.write(data_bytes)
        return 0
    keys = repo.keys() if args.all else [args.key] if args.key else []
    if not keys:
        raise CommandError("name a mail KEY, or --all")
    if args.action == "delete":
        for key in keys:
            if not repo.remove(key):
                raise CommandError(f"no mail {key} in repository {args.name}")
            print(f"deleted {key}")
        return 0
    return _reprocess(data, repo, keys, args.processor)


def _reprocess(data: Path, repo: Any, keys: list[str], processor: str | None) -> int:
    from kittiwake.mailet.sendmail import submit

    for key in keys:
        try:
            mail = repo.load(key)
        except KeyError:
            raise CommandError(f"no mail {key} in repository {repo.name}") from None
        state = processor or mail.state
        qid = submit(
            data,
            mail.message.as_bytes(),
            mail.sender or "",
            mail.recipients,
            protocol="REPROCESS",
            auth_user=mail.auth_user or "",
            state=state,
            client=mail.remote_addr,
            helo=mail.remote_host,
        )
        # The spool has it durably: only now leave the repository (a crash in between
        # leaves it in both; it is never in neither).
        repo.remove(key)
        print(f"reprocessing {key} as {qid} in processor {state}")
    return 0
