"""Baseline for the throughput benchmark: aiosmtpd 1.4.6 writing each message into a Maildir.

The handler gives the same durability promise as kittiwake: the ``250`` after DATA is sent only
after the message is a file in ``new/`` and both the file and the ``new/`` directory are fsynced
(write into ``tmp/``, fsync the file, rename into ``new/``, fsync ``new/``).

Run it in its own process; it serves until SIGTERM or SIGINT::

    .venv/bin/python benchmarks/aiosmtpd_maildir.py --port 2525 --maildir /tmp/x/Maildir

By default the event loop is uvloop (aiosmtpd is uvloop-compatible since 1.4.3) and the blocking
file work runs in the loop's default thread pool, so several sessions can wait on fsync at the
same time, the way any sensible asyncio handler would do it. ``--asyncio`` selects the standard
loop and ``--inline-fsync`` does the file work on the event loop thread (it then serialises every
session behind each fsync); both exist to show what the choices cost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Maildir:
    """A Maildir (``tmp/ new/ cur/``) written with fsync of the file and of ``new/``.

    Args:
        root: the Maildir directory; created with its three subdirectories if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._tmp = root / "tmp"
        self._new = root / "new"
        # One descriptor for new/, opened once: fsync acts on the directory inode.
        self._new_fd = os.open(self._new, os.O_RDONLY | os.O_DIRECTORY)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._pid = os.getpid()
        self._seq = itertools.count()  # next() on itertools.count is atomic under the GIL

    def _unique_name(self) -> str:
        # The classic Maildir name: time.MusecPpidQdelivery.host (cr.yp.to/proto/maildir.html)
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{self._pid}Q{next(self._seq)}.{self._host}"

    def deliver(self, content: bytes) -> str:
        """Write one message durably.

        Args:
            content: the message as received (headers and body, CRLF line ends).

        Returns:
            The file name under ``new/``.
        """
        name = self._unique_name()
        tmp_path = self._tmp / name
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, self._new / name)
        os.fsync(self._new_fd)
        return name

    def close(self) -> None:
        os.close(self._new_fd)


class MaildirHandler:
    """aiosmtpd handler: every accepted message goes into one Maildir, then ``250 OK``."""

    def __init__(self, maildir: Maildir, *, inline: bool) -> None:
        self.maildir = maildir
        self.inline = inline

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert content is not None
        if self.inline:
            self.maildir.deliver(content)
        else:
            await asyncio.get_running_loop().run_in_executor(None, self.maildir.deliver, content)
        return "250 OK"


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    maildir = Maildir(Path(args.maildir))
    handler = MaildirHandler(maildir, inline=args.inline_fsync)

    def factory() -> Any:
        # hostname given: otherwise aiosmtpd calls socket.getfqdn() once per connection.
        return SMTP(handler, hostname=args.hostname, data_size_limit=None, loop=loop)

    server = await loop.create_server(factory, args.host, args.port, backlog=args.backlog)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop_name = type(loop).__module__.split(".")[0]
    mode = "inline" if args.inline_fsync else "thread pool"
    print(
        f"aiosmtpd_maildir listening on {args.host}:{args.port} "
        f"(loop: {loop_name}, fsync: {mode}, maildir: {args.maildir})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        maildir.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", required=True, help="Maildir directory (tmp/ new/ cur/ made)")
    p.add_argument("--hostname", default="bench.test", help="name in the greeting and EHLO")
    p.add_argument("--backlog", type=int, default=512, help="listen() backlog")
    p.add_argument("--asyncio", action="store_true", help="standard asyncio loop, not uvloop")
    p.add_argument(
        "--inline-fsync",
        action="store_true",
        help="do the write/fsync/rename on the event loop thread instead of the thread pool",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.asyncio:
        asyncio.run(serve(args))
        return 0
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed; use --asyncio", file=sys.stderr)
        return 2
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
