"""``kittiwake sendmail`` (and the ``sendmail`` entry point): local submission for cron,
scripts and PHP's ``mail()``, with the usual flags.

The message is read from standard input and committed to the spool under DATA (the
same durable commit as after SMTP DATA); a running server takes it over within its
sweep interval and runs it through the mailet container like any other mail, marked as
submitted by a local user (``SMTPAuthSuccessful`` matches, so it may relay).

Flags (as Postfix's and sendmail's): ``-t`` recipients from To, Cc and Bcc (Bcc is then
removed); ``-f ADDR`` (or ``-fADDR``, ``-r``) the envelope sender; ``-F NAME`` the full
name for a From: field that is added; ``-i`` / ``-oi`` a line with a single dot does not
end the message; ``-bm`` (the default) read a message; ``-bs`` speak SMTP on standard
input and output (through a loopback server, see :func:`main`); ``-oXXX`` options and
``-v`` are accepted and ignored. The exit status follows ``sysexits.h``: 0, 64 usage,
65 data error, 75 temporary failure.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
import time
from collections.abc import Sequence
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import BinaryIO

from kittiwake.mailet.message import Message

__all__ = ["add_arguments", "main", "run_sendmail", "submit"]

EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 64, 65, 75


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", dest="from_headers", action="store_true", help="recipients from headers")
    p.add_argument("-f", "-r", dest="sender", help="envelope sender")
    p.add_argument("-F", dest="full_name", help="full name of the sender")
    p.add_argument("-i", dest="ignore_dots", action="store_true", help="ignore lone dots")
    p.add_argument("-b", dest="mode", default="m", help="m: read a message (default); s: SMTP")
    p.add_argument("-o", dest="options", action="append", default=[], help="(ignored)")
    p.add_argument("-v", dest="verbose", action="store_true", help="(ignored)")
    p.add_argument("recipients", nargs="*")


def _read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    raw = stream.read()
    lines = raw.splitlines()
    if not ignore_dots:
        for i, line in enumerate(lines):
            if line == b".":
                lines = lines[:i]
                break
    return b"".join(line + b"\r\n" for line in lines)


def submit(
    data_dir: Path,
    message: bytes,
    sender: str,
    recipients: Sequence[str],
    *,
    protocol: str = "LOCAL",
    auth_user: str = "",
    state: str = "",
    client: str = "127.0.0.1",
    helo: str = "localhost",
) -> str:
    """Commit a message to the spool under ``data_dir`` (*blocking*); its queue ID.

    Raises:
        OSError: the spool refused it.
    """
    from kittiwake.queue._envelope import Envelope
    from kittiwake.queue.spool import Spool

    async def go() -> str:
        spool = Spool(data_dir / "spool", threads=1)
        await asyncio.to_thread(spool.open)
        try:
            writer = spool.begin()
            writer.write(message)
            env = Envelope(
                queue_id=writer.queue_id,
                sender=sender,
                recipients=tuple(recipients),
                client_address=client,
                helo=helo,
                received_at=time.time(),
                protocol=protocol,
                size=len(message),
                auth_user=auth_user,
                state=state,
            )
            await writer.commit(env)
            return writer.queue_id
        finally:
            await asyncio.to_thread(spool.close)

    return asyncio.run(go())


def run_sendmail(args: argparse.Namespace, data_dir: Path, default_domain: str) -> int:
    """``kittiwake sendmail`` with parsed arguments."""
    mode = args.mode
    if mode == "s":
        return _smtp_on_stdio(data_dir, default_domain)
    if mode not in ("m", "m "):
        print(f"sendmail: -b{mode} is not supported (use -bm or -bs)", file=sys.stderr)
        return EX_USAGE
    ignore_dots = args.ignore_dots or any(o == "i" for o in args.options)
    body = _read_message(sys.stdin.buffer, ignore_dots)
    user = _login()
    sender = args.sender if args.sender is not None else f"{user}@{default_domain}"
    if sender == "<>":
        sender = ""
    sender = sender.strip("<>")
    msg = Message.from_bytes(body)
    recipients = list(args.recipients)
    if args.from_headers:
        fields = msg.get_all("to") + msg.get_all("cc") + msg.get_all("bcc")
        recipients += [a for _n, a in getaddresses(fields) if a]
        msg.remove_header("bcc")
    recipients = [r if "@" in r else f"{r}@{default_domain}" for r in recipients]
    if not recipients:
        print("sendmail: no recipients (give them as arguments, or use -t)", file=sys.stderr)
        return EX_USAGE
    host = socket.gethostname() or "localhost"
    if not msg.has("from"):
        name = f"{args.full_name} " if args.full_name else ""
        msg.add_header(
            "From", f"{name}<{sender}>" if sender else f"{name}<{user}@{default_domain}>"
        )
    if not msg.has("date"):
        msg.add_header("Date", formatdate(localtime=True))
    if not msg.has("message-id"):
        msg.add_header("Message-ID", f"<{time.time_ns():x}.{os.getpid()}@{host}>")
    msg.prepend_header(
        "Received",
        f"by {host} (kittiwake sendmail, from userid {os.getuid()}); {formatdate(localtime=True)}",
    )
    try:
        qid = submit(
            data_dir,
            msg.as_bytes(),
            sender,
            recipients,
            auth_user=f"{user}@{default_domain}",
        )
    except OSError as exc:
        print(f"sendmail: cannot queue the message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if args.verbose:
        print(f"queued as {qid}", file=sys.stderr)
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _smtp_on_stdio(data_dir: Path, default_domain: str) -> int:
    """``-bs``: a small SMTP dialogue on standard input/output (enough for clients that
    drive sendmail this way: HELO/EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT)."""
    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    host = socket.gethostname() or "localhost"

    def reply(text: str) -> None:
        out.write(text.encode() + b"\r\n")
        out.flush()

    reply(f"220 {host} ESMTP kittiwake sendmail")
    sender: str | None = None
    rcpts: list[str] = []
    user = _login()
    while True:
        line = inp.readline()
        if not line:
            return 0
        cmd = line.decode("utf-8", "replace").strip()
        verb = cmd[:4].upper()
        if verb in ("HELO", "EHLO"):
            reply(f"250 {host}")
        elif verb == "MAIL":
            sender = _path(cmd)
            rcpts = []
            reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            if sender is None:
                reply("503 5.5.1 Error: need MAIL command")
                continue
            rcpts.append(_path(cmd))
            reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if not rcpts or sender is None:
                reply("503 5.5.1 Error: need RCPT command")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            lines: list[bytes] = []
            while True:
                raw = inp.readline()
                if not raw or raw.rstrip(b"\r\n") == b".":
                    break
                raw = raw.rstrip(b"\r\n")
                lines.append(raw[1:] if raw.startswith(b".") else raw)
            data = b"".join(x + b"\r\n" for x in lines)
            try:
                qid = submit(data_dir, data, sender, rcpts, auth_user=f"{user}@{default_domain}")
            except OSError as exc:
                reply(f"451 4.3.0 cannot queue: {exc}")
            else:
                reply(f"250 2.0.0 Ok: queued as {qid}")
            sender, rcpts = None, []
        elif verb == "RSET":
            sender, rcpts = None, []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return 0
        else:
            reply("502 5.5.2 Error: command not recognized")


def _path(cmd: str) -> str:
    _, _, rest = cmd.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        rest = rest[1 : rest.find(">")] if ">" in rest else rest[1:]
    return rest.split()[0] if rest.split() else ""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sendmail`` entry point: ``kittiwake sendmail`` with sendmail's own
    argument spelling (``-oi``, ``-fADDR``, ``-bs``); DATA from ``$KITTIWAKE_DATA``."""
    from kittiwake.cli import main as kittiwake

    return kittiwake(["sendmail", *_normalise(list(sys.argv[1:] if argv is None else argv))])


def _normalise(argv: list[str]) -> list[str]:
    """``-oi`` -> ``-o i``; ``-bs`` -> ``-b s`` (argparse reads the joined forms too,
    but ``-oi`` must not be taken for ``-o`` + ``-i`` of something else)."""
    out = []
    for a in argv:
        if a.startswith("-o") and len(a) > 2:
            out += ["-o", a[2:]]
        elif a.startswith("-b") and len(a) > 2:
            out += ["-b", a[2:]]
        else:
            out.append(a)
    return out
