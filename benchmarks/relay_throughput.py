"""Relay throughput of kittiwake against Postfix, in one run (issue 8, point 9).

Each round starts, for each relay, a fresh Postfix ``smtp-sink`` as the destination and a
fresh relay (its own data or queue directory) that sends everything it accepts to that sink:
kittiwake's RemoteDelivery with ``gateway`` = the sink, a private Postfix instance with
``relayhost`` = the sink. ``smtp-source`` (SESSIONS parallel sessions, one message of SIZE
payload bytes per connection, from a trusted loopback client, to a domain that is not
local) drives the relay; the clock runs from launching ``smtp-source`` until the sink has
counted MESSAGES completed transactions (``smtp-sink -c``: its ``mesg=`` counter, read as
it is printed). The relays alternate in ABBA order; the medians over the rounds and their
ratio (kittiwake / Postfix) are printed. The target is a ratio of at least 1.5.

Run from the repository root, as root (Postfix's daemons switch to the ``postfix`` user
and ``smtp-sink`` to ``nobody``)::

    .venv/bin/python benchmarks/relay_throughput.py [--messages N] [--rounds R]
        [--sessions 20] [--size 2048] [--delivery-threads 20] [--kittiwake-args='--workers 2']

Exit status: 0 when every round completed (whether or not the target was met), 1 when a
relay did not come up or a round did not complete, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from smtp_throughput import (
    BenchError,
    clean_env,
    free_port,
    indent,
    wait_for_greeting,
    wait_until_settled,
)

SOURCE = "/usr/sbin/smtp-source"
SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
ETC = Path("/etc/postfix")
SINK_ADDRESS = "127.0.0.6"  # the destination: another loopback address than the relay's
SENDER = "sender@source.bench"
RECIPIENT = "user@destination.bench"  # not a local domain of either relay: relayed
LOCAL_DOMAIN = "relay.bench"
TARGET_RATIO = 1.5
START_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- the sink


class Sink:
    """``smtp-sink -c`` on SINK_ADDRESS: its counter of completed mail transactions."""

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir: Path, target: int) -> None:
        self.port = free_port_on(SINK_ADDRESS)
        self.target = target
        self.count = 0
        self.t_reached: float | None = None
        self.reached = threading.Event()
        self.log = workdir / "smtp-sink.err"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [SINK, *user, "-c", f"{SINK_ADDRESS}:{self.port}", "1024"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for_greeting_at(self.proc, SINK_ADDRESS, self.port, START_TIMEOUT_S)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        tail = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            tail = (tail + chunk)[-256:]
            found = self._MESG.findall(tail)
            if found:
                self.count = max(self.count, int(found[-1]))
                if self.count >= self.target and self.t_reached is None:
                    self.t_reached = time.perf_counter()
                    self.reached.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def free_port_on(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def wait_for_greeting_at(
    proc: subprocess.Popen[bytes], address: str, port: int, timeout: float
) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"smtp-sink exited with status {proc.returncode}")
        try:
            with socket.create_connection((address, port), timeout=1.0) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"smtp-sink not answering on {address}:{port}")


# --------------------------------------------------------------------------- the relays


@dataclass
class Relay:
    """A started relay: ``stop()`` ends it, ``queued()`` counts what it still holds."""

    name: str
    port: int
    stop: Callable[[], str | None]
    queued: Callable[[], int]
    log: Callable[[], str]
    #: the main process (kittiwake serve, Postfix's master): its tree's CPU is measured
    pid: int


def start_kittiwake(
    workdir: Path, sink: Sink, kittiwake: str, extra: Sequence[str], threads: int
) -> Relay:
    from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER

    conf, data = workdir / "conf", workdir / "data"
    conf.mkdir()
    data.mkdir()
    port = free_port()
    (conf / "smtpserver.xml").write_text(
        '<smtpservers><smtpserver enabled="true"><jmxName>smtp</jmxName>'
        f"<bind>127.0.0.1:{port}</bind>"
        f'<helloName autodetect="false">{LOCAL_DOMAIN}</helloName>'
        "<maxmessagesize>0</maxmessagesize>"
        # smtp-source cannot AUTH: the loopback client is a trusted network, as it is
        # in Postfix's mynetworks
        "<authorizedAddresses>127.0.0.0/8</authorizedAddresses>"
        "</smtpserver></smtpservers>\n"
    )
    (conf / "domainlist.xml").write_text(
        f"<domainlist><domainnames><domainname>{LOCAL_DOMAIN}</domainname></domainnames>"
        f"<defaultDomain>{LOCAL_DOMAIN}</defaultDomain></domainlist>\n"
    )
    # no DNS query leaves the machine (the gateway is an address: none is made)
    (conf / "dnsservice.xml").write_text(
        "<dnsservice><servers><server>127.0.0.1:9</server></servers>"
        "<autodiscover>false</autodiscover><timeout>1</timeout></dnsservice>\n"
    )
    start = DEFAULT_MAILETCONTAINER.index('<mailet match="All" class="RemoteDelivery">')
    end = DEFAULT_MAILETCONTAINER.index("</mailet>", start) + len("</mailet>")
    remote = (
        '<mailet match="All" class="RemoteDelivery">'
        "<outgoingQueue>outgoing</outgoingQueue><delayTime>5000, 100000, 500000</delayTime>"
        f"<maxRetries>3</maxRetries><deliveryThreads>{threads}</deliveryThreads>"
        # as many connections to the sink as deliveries (Postfix: 20 to the relay
        # host); kittiwake's own default is 10 per destination
        f"<maxConnectionsPerDomain>{threads}</maxConnectionsPerDomain>"
        "<sendpartial>true</sendpartial><bounceProcessor>bounces</bounceProcessor>"
        f"<gateway>{SINK_ADDRESS}:{sink.port}</gateway></mailet>"
    )
    (conf / "mailetcontainer.xml").write_text(
        DEFAULT_MAILETCONTAINER[:start] + remote + DEFAULT_MAILETCONTAINER[end:]
    )
    cmd = [kittiwake, "serve", "--conf", str(conf), "--data", str(data), *extra]
    log = workdir / "kittiwake.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=clean_env()
        )

    def stop() -> str | None:
        if proc.poll() is not None:
            return f"had already exited with status {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "ignored SIGTERM and was killed"
        return None

    def queued() -> int:
        """Mails in the outgoing repository, and spool entries (a first attempt is
        made from the spool: the entry goes once the sink took the mail)."""
        from kittiwake.queue import is_queue_id

        outgoing = data / "repositories" / "outgoing"
        try:
            stored = sum(1 for n in os.listdir(outgoing) if n.endswith(".json"))
        except FileNotFoundError:
            stored = 0
        spooled = sum(1 for _, _, files in os.walk(data / "spool") for n in files if is_queue_id(n))
        return stored + spooled

    def read_log() -> str:
        return log.read_text(errors="replace")

    try:
        wait_for_greeting(proc, port, START_TIMEOUT_S)
    except BenchError as exc:
        stop()
        raise BenchError(f"kittiwake did not come up: {exc}\n{indent(read_log())}") from None
    return Relay("kittiwake", port, stop, queued, read_log, proc.pid)


def start_postfix(workdir: Path, sink: Sink) -> Relay:
    """A private Postfix 3.7 (see ../shared/reference/peers-on-loopback.md): smtpd on a
    loopback port, mynetworks 127.0.0.0/8, everything to ``relayhost`` = the sink. Its
    defaults otherwise (queue files fsynced, 20 parallel deliveries to one destination
    after slow start, connection caching when the queue has a backlog)."""
    d = workdir / "postfix"
    d.mkdir()
    os.chmod(d, 0o755)
    port = free_port()
    for name in ("dynamicmaps.cf", "postfix-files"):
        shutil.copy(ETC / name, d / name)
    if (ETC / "dynamicmaps.cf.d").is_dir():
        shutil.copytree(ETC / "dynamicmaps.cf.d", d / "dynamicmaps.cf.d")
    master = []
    for line in (ETC / "master.cf").read_text().splitlines():
        fields = line.split()
        if line[:1] in ("#", " ", "\t") or len(fields) < 8:
            master.append(line)
            continue
        if fields[0] == "smtp" and fields[1] == "inet":
            fields[0] = f"127.0.0.1:{port}"
        fields[4] = "n"  # no chroot: the instance lives in a temporary directory
        master.append(" ".join(fields))
    (d / "master.cf").write_text("\n".join(master) + "\n")
    (d / "queue").mkdir()
    (d / "data").mkdir()
    shutil.chown(d / "data", "postfix", "postfix")
    (d / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = {d}
mail_owner = postfix
myhostname = {LOCAL_DOMAIN}
mydomain = {LOCAL_DOMAIN}
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [{SINK_ADDRESS}]:{sink.port}
alias_maps =
alias_database =
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = /tmp, /var
message_size_limit = 0
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
"""
    )

    def postfix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(d), *args], capture_output=True, text=True, timeout=60
        )

    def read_log() -> str:
        log = d / "maillog"
        return log.read_text(errors="replace") if log.exists() else ""

    started = postfix("start")
    if started.returncode != 0:
        postfix("stop")
        raise BenchError(f"postfix start: {started.stdout}{started.stderr}\n{read_log()}")

    def stop() -> str | None:
        postfix("stop")
        deadline = time.monotonic() + 20
        while postfix("status").returncode == 0:
            if time.monotonic() > deadline:
                return "did not stop within 20 s"
            time.sleep(0.1)
        return None

    def queued() -> int:
        result = subprocess.run(
            [POSTQUEUE, "-c", str(d), "-j"], capture_output=True, text=True, timeout=60
        )
        return sum(1 for line in result.stdout.splitlines() if line.strip())

    try:
        probe = subprocess.Popen(["sleep", "3600"])  # wait_for_greeting wants a process
        try:
            wait_for_greeting(probe, port, START_TIMEOUT_S)
        finally:
            probe.kill()
            probe.wait()
    except BenchError as exc:
        stop()
        raise BenchError(f"postfix did not come up: {exc}\n{indent(read_log())}") from None
    master = int((d / "queue" / "pid" / "master.pid").read_text().split()[0])
    return Relay("postfix", port, stop, queued, read_log, master)


# --------------------------------------------------------------------------- a round


@dataclass(frozen=True, slots=True)
class RoundResult:
    server: str
    round_no: int
    seconds_to_sink: float  # launch of smtp-source -> the sink counted MESSAGES
    seconds_client: float  # launch of smtp-source -> smtp-source exited (all 250 + QUIT)
    messages: int
    cpu_seconds: float  # CPU (user + system) of the relay's processes during the round

    @property
    def rate(self) -> float:
        return self.messages / self.seconds_to_sink

    @property
    def client_rate(self) -> float:
        return self.messages / self.seconds_client


def run_round(name: str, round_no: int, args: argparse.Namespace, base: Path) -> RoundResult:
    workdir = base / f"{name}-{round_no}"
    workdir.mkdir()
    os.chmod(workdir, 0o755)
    sink = Sink(workdir, args.messages)
    relay: Relay | None = None
    try:
        if name == "kittiwake":
            relay = start_kittiwake(
                workdir,
                sink,
                args.kittiwake,
                shlex.split(args.kittiwake_args),
                args.delivery_threads,
            )
        else:
            relay = start_postfix(workdir, sink)
        os.sync()  # settle the page cache before the clock runs
        cpu_before = tree_cpu(relay.pid)
        source_cmd = [
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
            f"127.0.0.1:{relay.port}",
        ]
        source_log = workdir / "smtp-source.log"
        with source_log.open("wb") as slog:
            t0 = time.perf_counter()
            source = subprocess.Popen(
                source_cmd, stdin=subprocess.DEVNULL, stdout=slog, stderr=slog
            )
            try:
                code = source.wait(args.round_timeout)
            except subprocess.TimeoutExpired:
                source.kill()
                code = source.wait()
            t_client = time.perf_counter() - t0
        if code != 0:
            raise BenchError(
                f"{name}: smtp-source exited {code} (round {round_no})\n"
                f"  command: {shlex.join(source_cmd)}\n"
                f"{indent(source_log.read_text(errors='replace'))}\n  relay log:\n"
                f"{indent(relay.log())}"
            )
        left = max(args.round_timeout - (time.perf_counter() - t0), 1.0)
        if not sink.reached.wait(left):
            raise BenchError(
                f"{name}: the sink counted {sink.count} of {args.messages} after "
                f"{time.perf_counter() - t0:.1f} s (round {round_no}); "
                f"{relay.queued()} still queued\n  relay log:\n{indent(relay.log())}"
            )
        assert sink.t_reached is not None
        t_sink = sink.t_reached - t0
        # nothing delivered twice, nothing left behind
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while relay.queued() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        if sink.count != args.messages:
            raise BenchError(f"{name}: the sink counted {sink.count}, sent {args.messages}")
        if relay.queued():
            raise BenchError(f"{name}: {relay.queued()} mails still queued after the run")
        cpu = tree_cpu(relay.pid) - cpu_before
    finally:
        warning = relay.stop() if relay is not None else None
        sink.stop()
    if warning:
        print(f"  warning: {name} {warning}", file=sys.stderr)
    # The round's files stay until the whole run is over (main() removes the base): on
    # ext4 without a journal (these machines), creating a file scans past every inode of
    # its block group freed in the last 60-360 s (fs/ext4/ialloc.c, recently_deleted()),
    # so deleting a round's thousands of files here made the next round's every file
    # creation cost hundreds of microseconds of kernel time, for whichever server ran next.
    return RoundResult(name, round_no, t_sink, t_client, args.messages, cpu)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, its children waited for, and its live
    descendants (Postfix's master and its services; kittiwake and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        # utime, stime, cutime, cstime
        times[int(entry)] = sum(int(x) for x in fields[11:15]) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return total


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Relay throughput: kittiwake against Postfix, smtp-sink the destination.",
        epilog="Pass arguments that start with '-' as --kittiwake-args='--workers 2'.",
    )
    p.add_argument("--messages", type=int, default=2000, help="messages per round (2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per relay (3)")
    p.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    p.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    p.add_argument(
        "--delivery-threads",
        type=int,
        default=20,
        help="kittiwake's RemoteDelivery deliveryThreads (20: Postfix's "
        "default_destination_concurrency_limit)",
    )
    p.add_argument("--servers", choices=["both", "kittiwake", "postfix"], default="both")
    p.add_argument(
        "--kittiwake",
        default=str(Path(sys.executable).parent / "kittiwake"),
        help="the kittiwake command (the one next to this Python)",
    )
    p.add_argument("--kittiwake-args", default="", help="extra `kittiwake serve` arguments")
    p.add_argument("--smtp-source", default=SOURCE)
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds per round")
    p.add_argument("--workdir", help="where round directories go (a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep data directories and logs")
    args = p.parse_args(argv)
    for opt in ("messages", "rounds", "sessions", "size", "delivery_threads"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be at least 1")
    for tool in (args.smtp_source, SINK):
        if not os.access(tool, os.X_OK):
            p.error(f"{tool} not found (Debian: apt-get install postfix)")
    if args.servers != "kittiwake" and (os.geteuid() != 0 or not os.access(POSTFIX, os.X_OK)):
        p.error("the Postfix side needs root and /usr/sbin/postfix (or --servers kittiwake)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = {"both": ["kittiwake", "postfix"], "kittiwake": ["kittiwake"]}.get(
        args.servers, ["postfix"]
    )
    base = Path(args.workdir or tempfile.mkdtemp(prefix="kittiwake-relay-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # Postfix's daemons (user postfix) work under it
    version = subprocess.run(
        ["postconf", "-dh", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages} messages of {args.size} "
        f"payload bytes, one message per connection, relayed to smtp-sink on {SINK_ADDRESS}; "
        f"{args.rounds} rounds; {os.cpu_count()} CPUs; Postfix {version}; kittiwake "
        f"deliveryThreads {args.delivery_threads}"
        + (f", serve {args.kittiwake_args}" if args.kittiwake_args else "")
        + f"; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[RoundResult] = []
    try:
        wait_until_settled(base)  # file creation is slow for minutes after mass deletions
        for round_no in range(1, args.rounds + 1):
            order = names if round_no % 2 else list(reversed(names))
            for name in order:
                r = run_round(name, round_no, args, base)
                results.append(r)
                print(
                    f"  round {r.round_no:>2}  {r.server:<10} {r.rate:>7.0f} msg/s to the sink "
                    f"({r.seconds_to_sink:6.2f} s)   accepted {r.client_rate:>7.0f} msg/s "
                    f"({r.seconds_client:6.2f} s)   CPU {1000 * r.cpu_seconds / r.messages:.2f} "
                    "ms/msg",
                    flush=True,
                )
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        print(f"(data and logs left in {base})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted (data left in {base})", file=sys.stderr)
        return 130
    print(
        "\nmessages per second from smtp-source's launch until the sink counted the last (median)"
    )
    medians: dict[str, float] = {}
    for name in names:
        rates = sorted(r.rate for r in results if r.server == name)
        accepted = statistics.median(r.client_rate for r in results if r.server == name)
        cpu = statistics.median(
            1000 * r.cpu_seconds / r.messages for r in results if r.server == name
        )
        medians[name] = statistics.median(rates)
        print(
            f"  {name:<10} {medians[name]:>7.0f} msg/s   (rounds, sorted: "
            f"{', '.join(f'{x:.0f}' for x in rates)}; accepted: {accepted:.0f} msg/s; "
            f"CPU {cpu:.2f} ms/msg)"
        )
    if len(names) == 2:
        ratio = medians["kittiwake"] / medians["postfix"]
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"  ratio kittiwake / postfix = {ratio:.2f}  (target >= {TARGET_RATIO}: {met})")
    if not args.keep and args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
