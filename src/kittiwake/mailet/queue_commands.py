"""``kittiwake queue list|show|flush|retry|remove``: the outgoing queue (issue 8).

The queue is RemoteDelivery's ``outgoing`` repository (every one the mailet container
configures), plus, for ``list`` and ``show``, the mails still in the spool: accepted
but not yet through the mailet container (a running server takes them within
milliseconds; a stopped one at its next start). Spool entries belong to the server's
spool runner and are only shown, never changed here.

Changes go through :mod:`kittiwake.mailet.outgoing`, under the mail's lock (``flock``
on ``KEY.json``): a mail being delivered right now is reported and left alone. A
running server sweeps its outgoing repositories every second, so ``flush`` and
``retry`` take effect within about a second without signalling it; a stopped server
delivers them at its next start.

A mail is named by its KEY (``queue list``'s first column), by the queue ID it had in
the spool (the KEY's first part, as the server's log names it), or by a unique prefix
of either.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kittiwake.mailet.outgoing import (
    Locked,
    make_due,
    outgoing_names,
    queued,
    read_retry,
    remove_mail,
)
from kittiwake.mailet.repository import MailRepository, RepositoryStore, repository_name

__all__ = ["QueueCommandError", "add_queue_parser", "run_queue"]


class QueueCommandError(Exception):
    """Printed without a traceback; exit status 1."""


def add_queue_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``queue`` to the ``kittiwake`` parser."""
    queue = sub.add_parser("queue", help="the outgoing queue (RemoteDelivery)")
    queue_sub = queue.add_subparsers(dest="action", required=True)
    repo_opt = argparse.ArgumentParser(add_help=False)
    repo_opt.add_argument(
        "--repository",
        action="append",
        help="this outgoing repository (default: those of the configured RemoteDelivery)",
    )
    p = queue_sub.add_parser(
        "list",
        parents=[common, repo_opt],
        help="one line per mail: KEY, sender, recipients, size, attempts, next attempt, "
        "last error (and the mails still in the spool)",
    )
    p.add_argument("--no-spool", action="store_true", help="leave out the spool")
    p = queue_sub.add_parser(
        "show", parents=[common, repo_opt], help="envelope, retry state and headers of a mail"
    )
    p.add_argument("key")
    p.add_argument("--full", action="store_true", help="the whole message, not only its headers")
    queue_sub.add_parser(
        "flush", parents=[common, repo_opt], help="make every deferred mail due now"
    )
    p = queue_sub.add_parser("retry", parents=[common, repo_opt], help="make one mail due now")
    p.add_argument("key", nargs="+")
    p = queue_sub.add_parser(
        "remove", parents=[common, repo_opt], help="delete mails from the queue (not sent)"
    )
    p.add_argument("key", nargs="+")


def run_queue(config: Any, data: Path, args: argparse.Namespace) -> int:
    """Raises: QueueCommandError."""
    store = RepositoryStore(data / "repositories")
    # a name, never a path: "../x" must not reach outside DATA/repositories
    names = [repository_name(n) for n in args.repository or []]
    if not names:
        from kittiwake.mailet import load_spec

        names = outgoing_names(load_spec(config.source)) or ["outgoing"]
    if args.action == "list":
        return _list(store, names, data, not args.no_spool)
    if args.action == "show":
        return _show(store, names, data, args.key, args.full)
    if args.action == "flush":
        return _flush(store, names, data)
    status = 0
    for key in args.key:
        repo, real = _resolve(store, names, key)
        try:
            if args.action == "retry":
                before = make_due(repo, real)
                if before and float(before.get("next", 0.0)) > time.time():
                    print(f"{real}: due now (was {_when(float(before['next']))})")
                else:
                    print(f"{real}: due already")
            else:
                info = remove_mail(repo, real)
                print(
                    f"removed {real} from {repo.name}: from=<{info.sender or ''}> "
                    f"to={','.join(info.recipients)} (not delivered, no bounce)"
                )
        except Locked:
            print(
                f"kittiwake: {real} is being delivered right now ({real}.json is locked by "
                f"a server process); left as it is: try again once the attempt is over",
                file=sys.stderr,
            )
            status = 1
        except KeyError:
            print(f"kittiwake: {real} is no longer queued (delivered meanwhile?)", file=sys.stderr)
            status = 1
    if args.action == "retry" and status == 0:
        print(_server_note(data))
    return status


# -- list -------------------------------------------------------------------------


def _list(store: RepositoryStore, names: list[str], data: Path, spool: bool) -> int:
    now = time.time()
    count = 0
    for m in queued(store, names):
        count += 1
        i = m.info
        if m.delivering:
            nxt = "delivering"
        elif m.next_attempt <= now:
            nxt = "now"
        else:
            nxt = _when(m.next_attempt)
        prefix = "" if len(names) == 1 else f"{m.repository}/"
        print(
            f"{prefix}{i.key}\tfrom=<{i.sender or ''}>\tto={','.join(i.recipients)}\t"
            f"size={i.size}\tattempts={m.attempts}\tnext={nxt}\terror={m.last_error or '-'}"
        )
    spooled = _spooled(data) if spool else []
    for e in spooled:
        env = e.envelope
        print(
            f"{env.queue_id}\tfrom=<{env.sender}>\tto={','.join(env.recipients)}\t"
            f"size={env.size}\tattempts=0\tnext=spool\terror=-"
        )
    where = " and ".join(names)
    print(
        f"{count} mail(s) in {where}" + (f", {len(spooled)} in the spool" if spool else ""),
        file=sys.stderr,
    )
    return 0


def _spooled(data: Path) -> list[Any]:
    from kittiwake.queue import list_spool

    return list_spool(data / "spool")


def _when(t: float) -> str:
    delta = t - time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    if delta <= 0:
        return stamp
    if delta < 120:
        return f"{stamp} (in {delta:.0f} s)"
    if delta < 7200:
        return f"{stamp} (in {delta / 60:.0f} min)"
    return f"{stamp} (in {delta / 3600:.1f} h)"


# -- show -------------------------------------------------------------------------


def _show(store: RepositoryStore, names: list[str], data: Path, key: str, full: bool) -> int:
    try:
        repo, real = _resolve(store, names, key)
    except QueueCommandError:
        for e in _spooled(data):
            if e.envelope.queue_id.startswith(key):
                return _show_spooled(e, full)
        raise
    try:
        mail = repo.load(real)
        info = repo.info(real)
    except KeyError:
        raise QueueCommandError(f"{real} is no longer queued (delivered meanwhile?)") from None
    m = next((x for x in queued(store, [repo.name]) if x.info.key == real), None)
    retry = read_retry(repo, real)
    lines = [
        f"Key: {real}",
        f"Repository: {repo.name} ({repo.path})",
        f"Queue-ID: {mail.name}",
        f"Envelope-From: <{mail.sender or ''}>",
        f"Envelope-To: {', '.join(mail.recipients)}",
        f"Size: {info.size}",
        f"Received: {_stamp(mail.received_at)} from {mail.remote_host} [{mail.remote_addr}]",
        f"Queued: {_stamp(info.stored_at)}",
    ]
    if mail.auth_user:
        lines.append(f"Auth-User: {mail.auth_user}")
    lines.append(f"Attempts: {int(retry.get('attempts', 0))}")
    if m is not None and m.delivering:
        lines.append("Next-Attempt: now (being delivered)")
    else:
        nxt = float(retry.get("next", 0.0))
        lines.append(f"Next-Attempt: {_when(nxt) if nxt > time.time() else 'now'}")
    if retry.get("error"):
        lines.append(f"Last-Error: {retry['error']}")
    _print_message(lines, mail.message.as_bytes(), full)
    return 0


def _show_spooled(entry: Any, full: bool) -> int:
    env = entry.envelope
    lines = [
        f"Queue-ID: {env.queue_id} (in the spool: not yet through the mailet container)",
        f"Envelope-From: <{env.sender}>",
        f"Envelope-To: {', '.join(env.recipients)}",
        f"Size: {env.size}",
        f"Received: {_stamp(env.received_at)} from {env.helo} [{env.client_address}] "
        f"with {env.protocol}",
    ]
    if env.auth_user:
        lines.append(f"Auth-User: {env.auth_user}")
    try:
        with open(entry.data_path, "rb") as f:
            body = f.read()
    except FileNotFoundError:
        raise QueueCommandError(f"{env.queue_id} left the spool meanwhile") from None
    _print_message(lines, body, full)
    return 0


def _print_message(lines: list[str], message: bytes, full: bool) -> None:
    print("\n".join(lines))
    print()
    sys.stdout.flush()
    if full:
        sys.stdout.buffer.write(message)
    else:
        end = message.find(b"\r\n\r\n")
        if end < 0:
            end = message.find(b"\n\n")
        head = message if end < 0 else message[: end + 2]
        sys.stdout.buffer.write(head)
    sys.stdout.flush()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t)) if t else "unknown"


# -- flush ------------------------------------------------------------------------


def _flush(store: RepositoryStore, names: list[str], data: Path) -> int:
    made = busy = gone = 0
    now = time.time()
    for m in list(queued(store, names)):
        if m.next_attempt <= now and not m.delivering:
            continue  # due already
        try:
            make_due(store.get(m.repository), m.info.key, now)
            made += 1
        except Locked:
            busy += 1
        except KeyError:
            gone += 1
    print(f"{made} deferred mail(s) made due now")
    if busy:
        print(f"{busy} mail(s) being delivered right now: left as they are")
    if gone:
        print(f"{gone} mail(s) left the queue meanwhile")
    print(_server_note(data))
    return 0


def _server_note(data: Path) -> str:
    from kittiwake.server.runtime import PID_FILE

    try:
        pid = int((data / PID_FILE).read_text().strip())
        running = Path(f"/proc/{pid}").exists()
    except (OSError, ValueError):
        running = False
    if running:
        return "the running server sends them at its next sweep (within a second)"
    return "no server is running on this data directory: they go when it starts"


# -- naming a mail ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    repo: MailRepository
    key: str


def _resolve(store: RepositoryStore, names: list[str], key: str) -> tuple[MailRepository, str]:
    """KEY, queue ID or a unique prefix of either -> (repository, KEY).

    Raises:
        QueueCommandError: none, or several.
    """
    if not key or "/" in key or key.startswith("."):
        raise QueueCommandError(f"not a queue KEY: {key!r}")
    exact: list[_Match] = []
    close: list[_Match] = []
    for name in names:
        repo = store.get(name)
        keys = repo.keys()  # the keys, not StoredMails as iterating the repository gives
        for k in keys:
            if k == key:
                exact.append(_Match(repo, k))
            elif k.startswith(key):
                close.append(_Match(repo, k))
    found = exact or close
    if len(found) == 1:
        return found[0].repo, found[0].key
    if not found:
        raise QueueCommandError(f"no mail {key} in the outgoing queue ({', '.join(names)})")
    raise QueueCommandError(f"{key} names several mails: {', '.join(m.key for m in found)}")
