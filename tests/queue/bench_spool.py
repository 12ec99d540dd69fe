"""Measure the spool and delivery cost per message (not a test; run it by hand).

    .venv/bin/python tests/queue/bench_spool.py [--messages N] [--sessions 20] [--size 2048]

Three runs in fresh directories, as the server uses them (uvloop if installed):

commit    N messages through ``begin/write/commit``, ``--sessions`` at a time
deliver   the runner delivering N messages already in the spool
full      both at once: commits with the runner delivering behind them
recover   (not by default) delivering N messages found in the spool at start: the
          careful path (journal lookup, Maildir scans) that prevents double delivery

For each: messages per second, and CPU per message (user and system, all threads of
the process, from ``getrusage``). Logging of deliveries is on (to a null handler via
a real ``logging.Handler``), as in the server.

The data directories are left in place (``--cleanup`` removes them at the very end):
ext4 skips inodes freed in the last 60-300 s when it allocates new ones
(``recently_deleted`` in fs/ext4/ialloc.c), so file creation right after deleting tens
of thousands of files costs several times more system CPU. Do not run this right
after a big ``rm -r`` (or a test run that cleans up its temporary directories).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from spool_helpers import body, commit

from kittiwake.delivery import MaildirDeliverer
from kittiwake.queue import Spool, SpoolRunner


class _Null(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # pay for the formatting, as a real handler would


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def _measure(label: str, n: int, work: Callable[[], Awaitable[None]]) -> None:
    u0, s0 = _cpu()
    t0 = time.perf_counter()
    await work()
    wall = time.perf_counter() - t0
    u1, s1 = _cpu()
    print(
        f"{label:8} {n / wall:7.0f} msg/s   cpu/msg: user {(u1 - u0) / n * 1e6:5.0f} µs"
        f"  sys {(s1 - s0) / n * 1e6:5.0f} µs  total {(u1 - u0 + s1 - s0) / n * 1e6:5.0f} µs"
    )


async def _run(mode: str, n: int, sessions: int, size: int, base: Path, threads: int) -> None:
    data = Path(tempfile.mkdtemp(dir=base))
    spool = Spool(data / "spool", threads=threads)
    deliverer = MaildirDeliverer.in_data_dir(data, hostname="bench.test")
    runner = SpoolRunner(spool, deliverer, str.lower, concurrency=2)
    message = body("bench", size)

    async def commits() -> None:
        async def session(first: int) -> None:
            for _ in range(first, n, sessions):
                await commit(spool, message)

        await asyncio.gather(*(session(i) for i in range(sessions)))

    if mode == "commit":
        spool.open()
        await _measure(mode, n, commits)
        spool.close()
    elif mode in ("deliver", "recover"):
        spool.open()
        await commits()
        if mode == "recover":
            spool.close()  # the next start recovers them: the careful path

        async def drain() -> None:
            await runner.start()  # ("recover": reopens the spool first)
            await runner.wait_idle(600)

        await _measure(mode, n, drain)
        await runner.stop()
        if spool.is_open:
            spool.close()
    else:
        await runner.start()

        async def both() -> None:
            await commits()
            await runner.wait_idle(600)

        await _measure(mode, n, both)
        await runner.stop()
    deliverer.close()
    if spool.flushes:
        print(f"         {n / spool.flushes:.1f} commits per log fsync; data in {data}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--modes", default="commit,deliver,full")
    parser.add_argument("--dir", default=None, help="where to make the data dirs")
    parser.add_argument("--threads", type=int, default=16, help="spool commit threads")
    parser.add_argument("--cleanup", action="store_true", help="remove the data at the end")
    args = parser.parse_args()
    log = logging.getLogger("kittiwake.mail")
    log.setLevel(logging.INFO)
    log.addHandler(_Null())
    log.propagate = False
    base = Path(args.dir or tempfile.gettempdir())
    try:
        import uvloop

        run: Callable[..., None] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    base = Path(tempfile.mkdtemp(prefix="kw-bench-", dir=base))
    for mode in args.modes.split(","):
        run(_run(mode, args.messages, args.sessions, args.size, base, args.threads))
    if args.cleanup:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
