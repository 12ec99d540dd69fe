"""LMTP deliveries per second: kittiwake against Dovecot's LMTP server, in one run.

Each round starts each server on fresh directories and drives it with Postfix's
``smtp-source -L`` (SESSIONS parallel LMTP sessions, one message of SIZE payload bytes per
connection), measuring the time from launching ``smtp-source`` until MESSAGES files exist in
the recipient's Maildir ``new/``. Both servers fsync each message file and its directory
before the 250 for its recipient (kittiwake always; Dovecot with ``mail_fsync = always``).
The servers alternate in ABBA order; the medians over the rounds and their ratio
(kittiwake / Dovecot) are printed. The target is a ratio of at least 1.0.

Dovecot (Debian's ``dovecot-lmtpd``) is started by the benchmark with a private
configuration in the round's directory: LMTP only, on a free loopback port, static userdb,
Maildirs owned by uid 5000, ``mail_fsync = always``. It must run as root (its mail processes
switch to uid 5000).

Run from the repository root::

    .venv/bin/python benchmarks/lmtp_throughput.py [--messages N] [--rounds R]
        [--sessions 20] [--size 2048]

Exit status: 0 when every round completed (whether or not the target was met), 1 when a
server did not come up or a round did not complete, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from smtp_throughput import (
    DOMAIN,
    LOCAL_PART,
    PASSWORD,
    RECIPIENT,
    BenchError,
    RoundResult,
    ServerSpec,
    clean_env,
    free_port,
    indent,
    print_round,
    run_round,
    summarize,
)

TARGET_RATIO = 1.0
MAIL_UID = 5000  # Dovecot's mail processes run as this uid (never as root)


def kittiwake_spec(kittiwake: str, extra_args: Sequence[str]) -> ServerSpec:
    def prepare(workdir: Path, port: int) -> tuple[list[str], dict[str, str], Path]:
        conf = workdir / "conf"
        data = workdir / "data"
        conf.mkdir()
        data.mkdir()
        (conf / "lmtpserver.xml").write_text(
            "<lmtpservers>\n"
            '  <lmtpserver enabled="true">\n'
            "    <jmxName>lmtp</jmxName>\n"
            f"    <bind>127.0.0.1:{port}</bind>\n"
            f'    <helloName autodetect="false">{DOMAIN}</helloName>\n'
            "    <maxmessagesize>0</maxmessagesize>\n"
            "  </lmtpserver>\n"
            "</lmtpservers>\n",
            encoding="utf-8",
        )
        # The SMTP listener is required; it gets a port of its own and is not driven.
        (conf / "smtpserver.xml").write_text(
            '<smtpservers><smtpserver enabled="true"><jmxName>smtp</jmxName>'
            f"<bind>127.0.0.1:{free_port()}</bind></smtpserver></smtpservers>\n",
            encoding="utf-8",
        )
        (conf / "domainlist.xml").write_text(
            f"<domainlist><domainnames><domainname>{DOMAIN}</domainname></domainnames>"
            f"<defaultDomain>{DOMAIN}</defaultDomain></domainlist>\n",
            encoding="utf-8",
        )
        env = clean_env()
        if os.geteuid() == 0:
            # Started as root, kittiwake drops to the user "kittiwake"; stay root here
            # as the tests do (nothing to protect in a benchmark's temporary directory).
            env["KITTIWAKE_USER"] = "root"
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


def dovecot_spec(dovecot: str) -> ServerSpec:
    def prepare(workdir: Path, port: int) -> tuple[list[str], dict[str, str], Path]:
        # Dovecot's mail processes (uid 5000) must reach the Maildirs: every directory above
        # them must be traversable (mkdtemp makes the base 0700).
        for d in (workdir, workdir.parent):
            os.chmod(d, 0o755)
        for sub in ("mail", "home"):
            (workdir / sub).mkdir()
            os.chown(workdir / sub, MAIL_UID, MAIL_UID)
        conf = workdir / "dovecot.conf"
        conf.write_text(
            f"base_dir = {workdir}/run\n"
            f"state_dir = {workdir}/state\n"
            f"log_path = {workdir}/dovecot.log\n"
            "protocols = lmtp\n"
            "listen = 127.0.0.1\n"
            "ssl = no\n"
            f"mail_location = maildir:{workdir}/mail/%d/%n\n"
            "mail_fsync = always\n"
            "passdb {\n  driver = static\n  args = nopassword=y\n}\n"
            "userdb {\n  driver = static\n"
            f"  args = uid={MAIL_UID} gid={MAIL_UID} home={workdir}/home/%d/%n "
            "allow_all_users=yes\n}\n"
            "service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n"
            f"    port = {port}\n  }}\n}}\n",
            encoding="utf-8",
        )
        cmd = [dovecot, "-F", "-c", str(conf)]  # foreground: SIGTERM stops it
        return cmd, clean_env(), workdir / "mail" / DOMAIN / LOCAL_PART

    return ServerSpec("dovecot", prepare)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="LMTP throughput: kittiwake against Dovecot LMTP (mail_fsync = always).",
        epilog="Pass arguments that start with '-' as --kittiwake-args='--workers 2'.",
    )
    p.add_argument("--messages", type=int, default=4000, help="messages per round (4000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per server (5)")
    p.add_argument("--sessions", type=int, default=20, help="parallel LMTP sessions (20)")
    p.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    p.add_argument(
        "--servers",
        choices=["both", "kittiwake", "dovecot"],
        default="both",
        help="which servers to run (both)",
    )
    p.add_argument(
        "--kittiwake",
        default=str(Path(sys.executable).parent / "kittiwake"),
        help="the kittiwake command (the one next to this Python)",
    )
    p.add_argument(
        "--kittiwake-args", default="", help="extra `kittiwake serve` arguments, shell-quoted"
    )
    p.add_argument("--dovecot", default="/usr/sbin/dovecot", help="dovecot path")
    p.add_argument("--smtp-source", default="/usr/sbin/smtp-source", help="smtp-source path")
    p.add_argument(
        "--round-timeout", type=float, default=300.0, help="give up on a round after (s)"
    )
    p.add_argument("--workdir", help="where round directories go (a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep data directories and logs")
    args = p.parse_args(argv)
    for opt in ("messages", "rounds", "sessions", "size"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be at least 1")
    if not (os.path.isfile(args.smtp_source) and os.access(args.smtp_source, os.X_OK)):
        p.error(f"smtp-source not found at {args.smtp_source} (Debian: apt-get install postfix)")
    if args.servers != "kittiwake":
        if not os.path.isfile(args.dovecot) or not os.path.exists("/usr/lib/dovecot/lmtp"):
            p.error("Dovecot's LMTP server not found (Debian: apt-get install dovecot-lmtpd)")
        if os.geteuid() != 0:
            p.error("Dovecot must be started as root (its mail processes switch to uid 5000)")
    if args.servers != "dovecot" and shutil.which(args.kittiwake) is None:
        p.error(f"kittiwake command not found: {args.kittiwake}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs: list[ServerSpec] = []
    if args.servers in ("both", "dovecot"):
        specs.append(dovecot_spec(args.dovecot))
    if args.servers in ("both", "kittiwake"):
        specs.append(kittiwake_spec(args.kittiwake, shlex.split(args.kittiwake_args)))
    names = [s.name for s in specs]

    base = Path(args.workdir or tempfile.mkdtemp(prefix="kittiwake-lmtp-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    version = ""
    if "dovecot" in names:
        out = subprocess.run([args.dovecot, "--version"], capture_output=True, text=True)
        version = f"; Dovecot {out.stdout.strip()}"
    print(
        f"smtp-source -L: {args.sessions} sessions, {args.messages} messages of {args.size} "
        f"payload bytes, one message per connection; {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs{version}; work in {base}",
        flush=True,
    )
    if args.kittiwake_args and "kittiwake" in names:
        print(f"kittiwake serve extra arguments: {args.kittiwake_args}")

    results: list[RoundResult] = []
    try:
        for round_no in range(1, args.rounds + 1):
            # ABBA: odd rounds in the given order, even rounds reversed.
            order = specs if round_no % 2 else list(reversed(specs))
            for spec in order:
                result = run_round(spec, round_no, args, base, source_options=("-L",))
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
        ratio = medians["kittiwake"] / medians["dovecot"]
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"  ratio kittiwake / dovecot = {ratio:.2f}  (target >= {TARGET_RATIO}: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
