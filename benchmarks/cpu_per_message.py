"""CPU time per message of the server processes, under a fixed smtp-source load.

Throughput on a shared 2-CPU machine moves with whatever else runs; the CPU a server
spends per message moves much less, so this is the figure to compare changes with.
Each round starts the server (as ``smtp_throughput.py`` does, same configuration),
reads the user and system time of the server and its worker processes from
``/proc/PID/stat``, drives it with ``smtp-source`` until MESSAGES files are in the
Maildir, reads the times again and prints the difference divided by MESSAGES.

Run from the repository root::

    .venv/bin/python benchmarks/cpu_per_message.py [--messages 3000] [--rounds 3]
        [--servers both] [--kittiwake-args='--workers 2']
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtp_throughput import (  # a script next to this one
    RECIPIENT,
    SENDER,
    BenchError,
    ServerSpec,
    aiosmtpd_spec,
    count_files,
    free_port,
    kittiwake_spec,
    stop_server,
    wait_for_greeting,
    wait_until_settled,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[float, float]:
    """User and system seconds of ``pid`` (its live threads included)."""
    return _times_of(f"/proc/{pid}/stat")  # utime, stime


def _tree(pid: int) -> list[int]:
    """``pid`` and its child processes (the workers of ``--workers N``)."""
    pids = [pid]
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == pid:
            pids.append(int(name))
    return pids


def tree_times(pids: list[int]) -> tuple[float, float, float]:
    """User and system seconds of ``pids``, and the part of both spent by their main
    threads (the event loops; the rest is spool, delivery and log threads)."""
    user = system = main = 0.0
    for p in pids:
        try:
            u, s = _times(p)
            mu, ms = _times_of(f"/proc/{p}/task/{p}/stat")
        except FileNotFoundError:
            continue
        user += u
        system += s
        main += mu + ms
    return user, system, main


def _times_of(path: str) -> tuple[float, float]:
    with open(path, "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def one_round(
    spec: ServerSpec, args: argparse.Namespace, base: Path, n: int
) -> tuple[float, float, float]:
    workdir = base / f"{spec.name}-{n}"
    workdir.mkdir()
    port = free_port()
    cmd, env, maildir = spec.prepare(workdir, port)
    os.sync()
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        wait_for_greeting(proc, port, 10.0)
        time.sleep(0.5)  # let the workers finish starting
        pids = _tree(proc.pid)
        u0, s0, m0 = tree_times(pids)
        source = subprocess.run(
            [
                args.smtp_source,
                "-s",
                str(args.sessions),
                "-l",
                str(args.size),
                "-m",
                str(args.messages),
                "-f",
                SENDER,
                "-t",
                RECIPIENT,
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            check=False,
            timeout=600,
        )
        if source.returncode != 0:
            raise BenchError(f"smtp-source failed: {source.stdout!r} {source.stderr!r}")
        deadline = time.monotonic() + 120
        while count_files(maildir / "new") < args.messages:
            if time.monotonic() > deadline:
                raise BenchError(f"{spec.name}: messages never all arrived")
            time.sleep(0.05)
        u1, s1, m1 = tree_times(pids)
    finally:
        stop_server(proc)
    # The round's files stay until the whole run is over (main() removes the base): on
    # ext4 without a journal (these machines), creating a file scans past every inode of
    # its block group freed in the last 60-360 s (fs/ext4/ialloc.c, recently_deleted()),
    # so deleting a round's thousands of files here made the next round's every file
    # creation cost hundreds of microseconds of kernel time, for whichever server ran next.
    per = 1e6 / args.messages
    return (u1 - u0) * per, (s1 - s0) * per, (m1 - m0) * per


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CPU µs per message of the server processes")
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--servers", choices=["both", "kittiwake", "aiosmtpd"], default="kittiwake")
    p.add_argument("--kittiwake", default=str(Path(sys.executable).parent / "kittiwake"))
    p.add_argument("--kittiwake-args", default="")
    p.add_argument("--smtp-source", default="/usr/sbin/smtp-source")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--workdir", help="where round directories go (default: a new one in $TMPDIR)")
    p.add_argument(
        "--no-settle",
        action="store_true",
        help="start at once, even while file creation is slow after mass deletions",
    )
    args = p.parse_args(argv)
    specs: list[ServerSpec] = []
    if args.servers in ("both", "aiosmtpd"):
        specs.append(aiosmtpd_spec([]))
    if args.servers in ("both", "kittiwake"):
        specs.append(kittiwake_spec(args.kittiwake, shlex.split(args.kittiwake_args)))
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="kittiwake-cpu-", dir=args.workdir))
    try:
        if not args.no_settle:  # see smtp_throughput.py: system time per file varies 10x
            wait_until_settled(base)
        for spec in specs:
            totals: list[float] = []
            for n in range(1, args.rounds + 1):
                user, system, main = one_round(spec, args, base, n)
                totals.append(user + system)
                print(
                    f"  {spec.name:<10} round {n}: {user + system:7.0f} µs/msg "
                    f"(user {user:.0f}, sys {system:.0f}; event loop threads {main:.0f}, "
                    f"other threads {user + system - main:.0f})",
                    flush=True,
                )
            print(f"{spec.name}: median {statistics.median(totals):.0f} µs CPU per message")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
