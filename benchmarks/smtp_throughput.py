"""SMTP throughput of kittiwake against an aiosmtpd 1.4.6 Maildir baseline, in one run.

Each round starts each server on fresh data directories, drives it with Postfix's
``smtp-source`` (SESSIONS parallel sessions, one message of SIZE payload bytes per connection)
and measures the time from launching ``smtp-source`` until MESSAGES files exist in the
recipient's Maildir ``new/``. The servers alternate in ABBA order (A B, B A, A B ...) so that
drift and noise on the machine hit both. The medians over the rounds and their ratio
(kittiwake / aiosmtpd) are printed; the target is a ratio of at least 1.5.

Run from the repository root::

    .venv/bin/python benchmarks/smtp_throughput.py [--messages N] [--rounds R]
        [--sessions 20] [--size 2048] [--kittiwake-args='--workers 2']

Exit status: 0 when every round completed (whether or not the target was met), 1 when a server
did not come up or a round did not complete, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE_SCRIPT = HERE / "aiosmtpd_maildir.py"
DOMAIN = "bench.test"
LOCAL_PART = "user"
# A sender outside the local domains: an MX receives mail from the world, and a local
# sender would need AUTH (verifyIdentity strict, as in James).
SENDER = "sender@remote.example"
RECIPIENT = f"{LOCAL_PART}@{DOMAIN}"
PASSWORD = "bench-password"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02
MAX_POLL_S = 0.25
TARGET_RATIO = 1.5


class BenchError(Exception):
    """A server did not start, smtp-source failed, or the messages never all arrived."""


@dataclass(frozen=True, slots=True)
class RoundResult:
    server: str
    round_no: int
    seconds_to_files: float  # launch of smtp-source -> MESSAGES files in new/
    seconds_client: float  # launch of smtp-source -> smtp-source exited (all 250 + QUIT)
    messages: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds_to_files

    @property
    def client_rate(self) -> float:
        return self.messages / self.seconds_client


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to prepare and start one server under test.

    ``prepare(workdir, port)`` writes configuration and returns the command line, the
    environment and the Maildir whose ``new/`` is counted.
    """

    name: str
    prepare: Callable[[Path, int], tuple[list[str], dict[str, str], Path]]


# --------------------------------------------------------------------------- servers


def kittiwake_spec(kittiwake: str, extra_args: Sequence[str]) -> ServerSpec:
    def prepare(workdir: Path, port: int) -> tuple[list[str], dict[str, str], Path]:
        conf = workdir / "conf"
        data = workdir / "data"
        conf.mkdir()
        data.mkdir()
        (conf / "smtpserver.xml").write_text(
            "<smtpservers>\n"
            '  <smtpserver enabled="true">\n'
            "    <jmxName>smtp</jmxName>\n"
            f"    <bind>127.0.0.1:{port}</bind>\n"
            f'    <helloName autodetect="false">{DOMAIN}</helloName>\n'
            "    <maxmessagesize>0</maxmessagesize>\n"
            "  </smtpserver>\n"
            "</smtpservers>\n",
            encoding="utf-8",
        )
        (conf / "domainlist.xml").write_text(
            "<domainlist>\n"
            f"  <domainnames><domainname>{DOMAIN}</domainname></domainnames>\n"
            f"  <defaultDomain>{DOMAIN}</defaultDomain>\n"
            "</domainlist>\n",
            encoding="utf-8",
        )
        env = clean_env()
        common = ["--conf", str(conf), "--data", str(data)]
        add = subprocess.run(
            [kittiwake, "user", "add", RECIPIENT, *common],
            input=f"{PASSWORD}\n{PASSWORD}\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if add.returncode != 0:
            raise BenchError(
                f"`kittiwake user add {RECIPIENT}` failed with exit status {add.returncode}\n"
                f"{indent(add.stdout + add.stderr)}"
            )
        cmd = [kittiwake, "serve", *common, *extra_args]
        return cmd, env, data / "mail" / DOMAIN / LOCAL_PART

    return ServerSpec("kittiwake", prepare)


def aiosmtpd_spec(extra_args: Sequence[str]) -> ServerSpec:
    def prepare(workdir: Path, port: int) -> tuple[list[str], dict[str, str], Path]:
        maildir = workdir / "data" / "mail" / DOMAIN / LOCAL_PART
        cmd = [
            sys.executable,
            str(BASELINE_SCRIPT),
            "--port",
            str(port),
            "--maildir",
            str(maildir),
            "--hostname",
            DOMAIN,
            *extra_args,
        ]
        return cmd, clean_env(), maildir

    return ServerSpec("aiosmtpd", prepare)


# --------------------------------------------------------------------------- helpers


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    # The command line names the directories; stale variables must not redirect them.
    env.pop("KITTIWAKE_CONF", None)
    env.pop("KITTIWAKE_DATA", None)
    env["PYTHONUNBUFFERED"] = "1"
    if os.geteuid() == 0:
        env.setdefault("KITTIWAKE_USER", "root")  # measure, don't drop privileges
    return env


def indent(text: str, limit: int = 4000) -> str:
    text = text.strip()
    if len(text) > limit:
        text = "[...]\n" + text[-limit:]
    return "\n".join("    " + line for line in text.splitlines()) or "    (empty)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:  # kittiwake may create new/ with the first delivery
        return 0


class ClientWatch:
    """Waits for smtp-source in a thread and notes when it exited (seconds after t0)."""

    def __init__(self, source: subprocess.Popen[bytes], t0: float) -> None:
        self.seconds: float | None = None
        self.done = threading.Event()
        self._source = source
        self._t0 = t0
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        self._source.wait()
        self.seconds = time.perf_counter() - self._t0
        self.done.set()


def next_poll(have: int, want: int, elapsed: float) -> float:
    """Seconds until the next count of new/.

    A count costs about 2 ms of CPU at 4,000 files, and the machine has few cores: while the
    end is far away, sleep for half the estimated remaining time (at most MAX_POLL_S), and
    every POLL_INTERVAL_S once it is near, so the end is still seen within POLL_INTERVAL_S.
    """
    if have == 0:
        return POLL_INTERVAL_S
    remaining = (want - have) * elapsed / have
    return max(POLL_INTERVAL_S, min(MAX_POLL_S, remaining / 2))


def wait_for_greeting(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Wait until the server accepts a connection and sends its 220 greeting."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last_error = f"unexpected greeting {banner!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise BenchError(f"not answering on 127.0.0.1:{port} within {timeout:.0f} s ({last_error})")


def stop_server(proc: subprocess.Popen[bytes]) -> str | None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns a warning or None."""
    if proc.poll() is not None:
        return f"had already exited with status {proc.returncode}"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s and was killed"
    return None


def run_round(
    spec: ServerSpec,
    round_no: int,
    args: argparse.Namespace,
    base: Path,
    source_options: Sequence[str] = (),
) -> RoundResult:
    """One round of one server; ``source_options`` go to smtp-source (``-L``: LMTP)."""
    workdir = base / f"{spec.name}-{round_no}"
    workdir.mkdir()
    port = free_port()
    cmd, env, maildir = spec.prepare(workdir, port)
    new_dir = maildir / "new"
    server_log = workdir / "server.log"
    source_log = workdir / "smtp-source.log"
    # Settle the page cache (last round's deletions, this round's config) before the clock runs.
    os.sync()
    with server_log.open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        try:
            wait_for_greeting(proc, port, START_TIMEOUT_S)
        except BenchError as exc:
            stop_server(proc)
            raise BenchError(
                f"{spec.name} did not come up: {exc}\n"
                f"  command: {shlex.join(cmd)}\n"
                f"  its output:\n{indent(server_log.read_text(errors='replace'))}"
            ) from None
        before = count_files(new_dir)
        if before:
            raise BenchError(f"{spec.name}: {new_dir} holds {before} files before the run")
        source_cmd = [
            args.smtp_source,
            *source_options,
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
        ]
        with source_log.open("wb") as slog:
            t0 = time.perf_counter()
            source = subprocess.Popen(
                source_cmd, stdin=subprocess.DEVNULL, stdout=slog, stderr=slog
            )
            client = ClientWatch(source, t0)
            t_files: float | None = None
            while True:
                sleep = POLL_INTERVAL_S
                if t_files is None:
                    have = count_files(new_dir)
                    if have >= args.messages:
                        t_files = time.perf_counter() - t0
                    else:
                        sleep = next_poll(have, args.messages, time.perf_counter() - t0)
                if client.seconds is not None and (t_files is not None or source.returncode):
                    break
                if time.perf_counter() - t0 > args.round_timeout or proc.poll() is not None:
                    break
                if client.seconds is None:
                    client.done.wait(sleep)  # wakes at once when smtp-source exits
                else:
                    time.sleep(sleep)
            if source.poll() is None:
                source.kill()
                source.wait()
            client.thread.join()
        t_client = client.seconds
        source_out = source_log.read_text(errors="replace")
        if t_client is None or source.returncode != 0:
            raise BenchError(
                f"{spec.name}: smtp-source "
                + ("did not finish" if t_client is None else f"exited {source.returncode}")
                + f" (round {round_no})\n  command: {shlex.join(source_cmd)}\n"
                f"{indent(source_out)}\n  server output:\n"
                f"{indent(server_log.read_text(errors='replace'))}"
            )
        if t_files is None:
            got = count_files(new_dir)
            state = "exited" if proc.poll() is not None else "still running"
            raise BenchError(
                f"{spec.name}: {got} of {args.messages} messages in {new_dir} after "
                f"{time.perf_counter() - t0:.1f} s (server {state}, round {round_no})\n"
                f"  server output:\n{indent(server_log.read_text(errors='replace'))}"
            )
        # Let stragglers land, then make sure nothing was delivered twice.
        time.sleep(0.1)
        final = count_files(new_dir)
        if final != args.messages:
            raise BenchError(
                f"{spec.name}: {final} files in {new_dir}, expected exactly {args.messages}"
            )
        check_sample(spec.name, new_dir, args.size)
    finally:
        warning = stop_server(proc)
    if warning:
        print(f"  warning: {spec.name} {warning}", file=sys.stderr)
    # The round's files stay until the whole run is over (main() removes the base): on
    # ext4 without a journal (these machines), creating a file scans past every inode of
    # its block group freed in the last 60-360 s (fs/ext4/ialloc.c, recently_deleted()),
    # so deleting a round's thousands of files here made the next round's every file
    # creation cost hundreds of microseconds of kernel time, for whichever server ran next.
    return RoundResult(spec.name, round_no, t_files, t_client, args.messages)


#: a file creation costing more than this (µs, mean of a probe) means the filesystem is
#: still scanning recently freed inodes; a settled ext4 here creates one in 20-40 µs
SETTLED_CREATE_US = 80.0
SETTLE_MAX_S = 600.0
#: the probe: this many batches of this many files, in one new directory
PROBE_BATCHES = 4
PROBE_BATCH = 250


def create_cost_us(directory: Path, count: int = 200) -> float:
    """Mean CPU time to create and write a 2 KiB file in ``directory`` (the probe's
    files stay: deleting them would be the very thing the probe looks for)."""
    directory.mkdir(parents=True, exist_ok=True)
    start = len(os.listdir(directory))
    t0 = time.process_time()
    for i in range(start, start + count):
        fd = os.open(directory / f"p{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 2048)
        finally:
            os.close(fd)
    return (time.process_time() - t0) / count * 1e6


def probe_cost_us(base: Path) -> float:
    """The cost of a file creation where a server's files will go: in a new directory
    three levels below ``base`` (as a round's ``DATA/spool/00`` or Maildir ``new/``),
    after as many creations there as a round makes in its first second.

    A probe of a few files right in ``base`` said "settled" while the servers' files,
    in new subdirectories, cost ten times more: a new file takes the first free inode
    of its block group that was not freed in the last minutes, so the scan grows with
    every file the group gets (measured: 70, 116, 143, 166 µs for four batches of 250,
    in the same minute as a 21 µs probe in ``base``). So the figure is the last batch's.
    """
    probes = sorted(base.glob("settle-probe-*"))
    directory = base / f"settle-probe-{len(probes)}" / "data" / "spool" / "00"
    for _ in range(PROBE_BATCHES - 1):
        create_cost_us(directory, PROBE_BATCH)
    return create_cost_us(directory, PROBE_BATCH)


def wait_until_settled(base: Path, max_wait: float = SETTLE_MAX_S) -> None:
    """Wait until creating a file is cheap again on the filesystem of ``base``.

    On ext4 without a journal (these machines' root filesystem), creating a file scans
    past every inode of its block group freed in the last 60-360 s (fs/ext4/ialloc.c,
    recently_deleted()): after a test run or a previous benchmark removed tens of
    thousands of files, every file creation costs hundreds of microseconds of kernel
    time for minutes, and a round measures that instead of the server. Both servers
    create one file per message, so the run waits for the filesystem first.
    """
    t0 = time.monotonic()
    cost = probe_cost_us(base)
    if cost <= SETTLED_CREATE_US:
        return
    print(
        f"file creation costs {cost:.0f} µs (recently freed inodes, ext4 without a "
        f"journal); waiting for it to fall below {SETTLED_CREATE_US:.0f} µs",
        flush=True,
    )
    while cost > SETTLED_CREATE_US and time.monotonic() - t0 < max_wait:
        time.sleep(20)
        cost = probe_cost_us(base)
    state = "settled" if cost <= SETTLED_CREATE_US else "NOT settled; measuring anyway"
    print(f"  {cost:.0f} µs after {time.monotonic() - t0:.0f} s: {state}", flush=True)


def check_sample(name: str, new_dir: Path, size: int) -> None:
    """One delivered file must hold at least the payload smtp-source sent."""
    with os.scandir(new_dir) as it:
        entry = next(it)
        length = entry.stat().st_size
    if length < size:
        raise BenchError(f"{name}: {entry.path} is {length} bytes, payload was {size}")


# --------------------------------------------------------------------------- reporting


def print_round(r: RoundResult) -> None:
    print(
        f"  round {r.round_no:>2}  {r.server:<10} {r.rate:>8.0f} msg/s to last file "
        f"({r.seconds_to_files:6.3f} s)   client done {r.client_rate:>8.0f} msg/s "
        f"({r.seconds_client:6.3f} s)",
        flush=True,
    )


def summarize(results: list[RoundResult], names: list[str]) -> dict[str, float]:
    medians: dict[str, float] = {}
    print()
    print("messages per second until the last message is a file in the Maildir (median)")
    for name in names:
        rates = sorted(r.rate for r in results if r.server == name)
        med = statistics.median(rates)
        medians[name] = med
        spread = ", ".join(f"{x:.0f}" for x in rates)
        print(f"  {name:<10} {med:>8.0f} msg/s   (rounds, sorted: {spread})")
    return medians


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="SMTP throughput: kittiwake against aiosmtpd + fsynced Maildir.",
        epilog="Pass arguments that start with '-' as --kittiwake-args='--workers 2'.",
    )
    p.add_argument("--messages", type=int, default=4000, help="messages per round (4000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per server (5)")
    p.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    p.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    p.add_argument(
        "--servers",
        choices=["both", "kittiwake", "aiosmtpd"],
        default="both",
        help="which servers to run (both)",
    )
    p.add_argument(
        "--kittiwake",
        default=str(Path(sys.executable).parent / "kittiwake"),
        help="the kittiwake command (the one next to this Python)",
    )
    p.add_argument(
        "--kittiwake-args",
        default="",
        help="extra arguments for `kittiwake serve`, one shell-quoted string",
    )
    p.add_argument(
        "--aiosmtpd-args",
        default="",
        help="extra arguments for aiosmtpd_maildir.py (e.g. '--inline-fsync', '--asyncio')",
    )
    p.add_argument("--smtp-source", default="/usr/sbin/smtp-source", help="smtp-source path")
    p.add_argument(
        "--round-timeout", type=float, default=300.0, help="give up on a round after (s)"
    )
    p.add_argument("--workdir", help="where round directories go (a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep data directories and logs")
    p.add_argument(
        "--no-settle",
        action="store_true",
        help="start at once, even while file creation is slow after mass deletions",
    )
    args = p.parse_args(argv)
    for opt in ("messages", "rounds", "sessions", "size"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be at least 1")
    if not (os.path.isfile(args.smtp_source) and os.access(args.smtp_source, os.X_OK)):
        p.error(f"smtp-source not found at {args.smtp_source} (Debian: apt-get install postfix)")
    if args.servers != "aiosmtpd" and shutil.which(args.kittiwake) is None:
        p.error(f"kittiwake command not found: {args.kittiwake}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs: list[ServerSpec] = []
    if args.servers in ("both", "aiosmtpd"):
        specs.append(aiosmtpd_spec(shlex.split(args.aiosmtpd_args)))
    if args.servers in ("both", "kittiwake"):
        specs.append(kittiwake_spec(args.kittiwake, shlex.split(args.kittiwake_args)))
    names = [s.name for s in specs]

    base = Path(args.workdir or tempfile.mkdtemp(prefix="kittiwake-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages} messages of {args.size} "
        f"payload bytes, one message per connection; {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs; work in {base}",
        flush=True,
    )
    if args.kittiwake_args and "kittiwake" in names:
        print(f"kittiwake serve extra arguments: {args.kittiwake_args}")
    if args.aiosmtpd_args and "aiosmtpd" in names:
        print(f"aiosmtpd_maildir.py extra arguments: {args.aiosmtpd_args}")

    results: list[RoundResult] = []
    try:
        if not args.no_settle:
            wait_until_settled(base)
        for round_no in range(1, args.rounds + 1):
            # ABBA: odd rounds in the given order, even rounds reversed.
            order = specs if round_no % 2 else list(reversed(specs))
            for spec in order:
                result = run_round(spec, round_no, args, base)
                results.append(result)
                print_round(result)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        print(f"(data and logs left in {base})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted (data left in {base})", file=sys.stderr)
        return 130

    medians = summarize(results, names)
    if not args.keep and args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    if len(names) == 2:
        ratio = medians["kittiwake"] / medians["aiosmtpd"]
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"  ratio kittiwake / aiosmtpd = {ratio:.2f}  (target >= {TARGET_RATIO}: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
