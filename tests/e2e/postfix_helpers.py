"""A private Postfix instance for tests: its own configuration directory under /tmp, loopback
only, no system service touched (see ../shared/reference/peers-on-loopback.md).

It accepts mail over SMTP on 127.0.0.1:PORT (or another loopback address) for
``kittiwake.test`` (or another domain: the users listed in a texthash map) and hands it to
an LMTP server through ``virtual_transport``, or (``maildir=True``) delivers it itself into
Maildirs under its directory with virtual(8). Postfix must be started as root;
:func:`postfix_missing` says why a test cannot run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
ETC = Path("/etc/postfix")


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not os.path.exists(POSTFIX) or not (ETC / "master.cf").exists():
        return "postfix not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    return None


class PrivatePostfix:
    """One Postfix instance in a temporary directory (world-traversable: its daemons run
    as the ``postfix`` user)."""

    def __init__(
        self,
        smtp_port: int,
        transport: str,
        users: Iterable[str],
        *,
        address: str = "127.0.0.1",
        domain: str = "kittiwake.test",
        maildir: bool = False,
        main_cf: str = "",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kw-postfix-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.smtp_port = smtp_port
        #: smtpd listens here (master.cf); inet_interfaces stays 127.0.0.1: Postfix finds
        #: no interface for other 127.x addresses and refuses to start, silently
        self.address = address
        self.domain = domain
        self.vmail = self.dir / "vmail"
        self.maillog = self.dir / "maillog"
        self._started = False
        for name in ("dynamicmaps.cf", "postfix-files"):
            shutil.copy(ETC / name, self.dir / name)
        if (ETC / "dynamicmaps.cf.d").is_dir():
            shutil.copytree(ETC / "dynamicmaps.cf.d", self.dir / "dynamicmaps.cf.d")
        (self.dir / "master.cf").write_text(self._master_cf())
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix", "postfix")
        if maildir:
            # virtual(8) runs as uid 5000: the Maildirs' base must be its own
            self.vmail.mkdir()
            os.chown(self.vmail, 5000, 5000)
            lines = [f"{u} {u.rpartition('@')[2]}/{u.rpartition('@')[0]}/\n" for u in users]
            transport = "virtual"
            main_cf = (
                f"virtual_mailbox_base = {self.vmail}\nvirtual_uid_maps = static:5000\n"
                f"virtual_gid_maps = static:5000\n{main_cf}"
            )
        else:
            lines = [f"{u} x\n" for u in users]
        (self.dir / "vmaps").write_text("".join(lines))
        (self.dir / "main.cf").write_text(self._main_cf(transport) + main_cf)

    def _master_cf(self) -> str:
        """Debian's master.cf, chroot off everywhere, smtpd on 127.0.0.1:PORT only."""
        out = []
        for line in (ETC / "master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1] in ("#", " ", "\t") or len(fields) < 8:
                out.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{self.address}:{self.smtp_port}"
            fields[4] = "n"  # no chroot: the instance lives in /tmp
            out.append(" ".join(fields))
        return "\n".join(out) + "\n"

    def _main_cf(self, transport: str) -> str:
        d = self.dir
        return f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = {d}
mail_owner = postfix
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = /tmp, /var
virtual_mailbox_domains = {self.domain}
virtual_mailbox_maps = texthash:{d}/vmaps
virtual_transport = {transport}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
"""

    def start(self) -> None:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.dir), "start"], capture_output=True, text=True, timeout=30
        )
        self._started = True
        if result.returncode != 0:
            raise RuntimeError(f"postfix start: {result.stdout}{result.stderr}{self.log()}")

    def stop(self) -> None:
        """Stop the instance (always safe to call) and remove its directory."""
        if self._started:
            subprocess.run([POSTFIX, "-c", str(self.dir), "stop"], capture_output=True, timeout=30)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.running():  # did not stop on request: end its master by its pid
                with contextlib.suppress(OSError, ValueError):
                    pid = int((self.dir / "queue/pid/master.pid").read_text().split()[0])
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "master":
                        os.kill(pid, signal.SIGKILL)
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def running(self) -> bool:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.dir), "status"], capture_output=True, timeout=30
        )
        return result.returncode == 0

    def flush(self) -> None:
        """``postqueue -f``: try the deferred mail again now."""
        subprocess.run([POSTQUEUE, "-c", str(self.dir), "-f"], capture_output=True, timeout=30)

    def maildir_messages(self, address: str) -> list[bytes]:
        """What virtual(8) delivered to ``address`` (``maildir=True``), oldest first."""
        local, _, domain = address.rpartition("@")
        out: list[bytes] = []
        for sub in ("new", "cur"):
            box = self.vmail / domain / local / sub
            if box.is_dir():
                out += [p.read_bytes() for p in sorted(box.iterdir())]
        return out

    def wait_maildir(self, address: str, count: int, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.maildir_messages(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"{address}: {len(self.maildir_messages(address))} messages in Postfix's "
            f"Maildir, want {count}\n{self.log()[-3000:]}"
        )

    def reload(self) -> None:
        """``postfix reload``: new smtpd processes read the changed maps."""
        result = subprocess.run(
            [POSTFIX, "-c", str(self.dir), "reload"], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(f"postfix reload: {result.stdout}{result.stderr}")

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first maillog line matching ``pattern`` (a regular expression)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                found = regex.search(line)
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no maillog line matches {pattern!r}:\n{self.log()[-4000:]}")
