"""Kittiwake and a real Dovecot share one Maildir++ quota (issue 6, point 3): Dovecot,
configured with ``quota = maildir`` and no limits of its own, reads the limits kittiwake
writes into ``maildirsize``, counts kittiwake's deliveries, appends its own; kittiwake
counts Dovecot's. Each refuses what would go over, whoever delivered before."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port
from .lmtp_helpers import LmtpServer, make_lmtp, running

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAIL_UID = 5000  # Dovecot refuses uid 0 for mail; the Maildirs are given to this uid
pytestmark = pytest.mark.skipif(
    not (os.path.exists(DOVECOT) and os.path.exists(DOVEADM) and os.geteuid() == 0),
    reason="needs Dovecot (dovecot-lmtpd) and root (to give the Maildirs to a mail uid)",
)
ALICE = "alice@kittiwake.test"


@pytest.fixture
def base() -> Iterator[Path]:
    """Under /tmp, traversable: Dovecot's mail process (uid 5000) must reach DATA/mail."""
    path = Path(tempfile.mkdtemp(prefix="kw-dovecot-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lmtp(base: Path) -> Iterator[LmtpServer]:
    server = make_lmtp(base)
    (server.kw.conf / "kittiwake.xml").write_text(
        f'<kittiwake><maildir uid="{MAIL_UID}" gid="{MAIL_UID}" mode="0660"/>'
        '<quota storage="10K" messages="5"/></kittiwake>'
    )
    yield from running(server)


class Dovecot:
    def __init__(self, base: Path, mail_root: Path) -> None:
        self.port = free_port()
        self.conf = base / "dovecot.conf"
        home = base / "home"
        home.mkdir()
        os.chown(home, MAIL_UID, MAIL_UID)
        self.conf.write_text(
            f"base_dir = {base}/run\nstate_dir = {base}/state\n"
            f"log_path = {base}/dovecot.log\nprotocols = lmtp\nlisten = 127.0.0.1\n"
            f"ssl = no\nmail_location = maildir:{mail_root}/%d/%n\n"
            "mail_plugins = quota\n"
            "passdb {\n  driver = static\n  args = nopassword=y\n}\n"
            "userdb {\n  driver = static\n"
            f"  args = uid={MAIL_UID} gid={MAIL_UID} home={home}/%d/%n allow_all_users=yes\n}}\n"
            # no quota_rule: the limits come from maildirsize's header (kittiwake's)
            "plugin {\n  quota = maildir:User quota\n}\n"
            "service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n"
            f"    port = {self.port}\n  }}\n}}\n"
        )
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Dovecot did not start")

    def quota(self, user: str) -> dict[str, tuple[int, int]]:
        """``doveadm quota get``: type -> (value, limit); STORAGE in KiB."""
        out = subprocess.run(
            [DOVEADM, "-c", str(self.conf), "quota", "get", "-u", user],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        rows = [line.split() for line in out.splitlines()[1:]]
        return {r[2]: (int(r[3]), int(r[4])) for r in rows}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


def deliver(port: int, n: int) -> list[tuple[int, bytes]]:
    with smtplib.LMTP("127.0.0.1", port, timeout=15) as client:
        client.ehlo("mta.kittiwake.test")
        client.mail("sender@remote.test")
        code, text = client.rcpt(ALICE)
        if code != 250:
            return [(code, text)]
        return [client.data(b"Subject: %d\r\n\r\n%s\r\n" % (n, b"q" * 300))]


def test_dovecot_and_kittiwake_share_the_maildirsize(lmtp: LmtpServer, base: Path) -> None:
    kw = lmtp.kw
    assert [deliver(lmtp.port, i)[0][0] for i in range(2)] == [250, 250]
    dovecot = Dovecot(base, kw.data / "mail")
    try:
        # Dovecot reads kittiwake's limits and counts kittiwake's deliveries
        quota = dovecot.quota(ALICE)
        assert quota["MESSAGE"] == (2, 5) and quota["STORAGE"][1] == 10  # KiB
        assert [deliver(dovecot.port, i)[0][0] for i in (2, 3)] == [250, 250]
        lines = (kw.maildir(ALICE) / "maildirsize").read_text().splitlines()
        assert lines[0] == "10240S,5C" and len(lines) == 1 + 1 + 4  # header, base, 4 adds
        # kittiwake counts Dovecot's two: the fifth fits, the sixth does not
        assert deliver(lmtp.port, 4)[0][0] == 250
        assert deliver(lmtp.port, 5) == [(552, b"5.2.2 Mailbox full: over its size limit")]
        # and Dovecot refuses too, with kittiwake's limit
        code, text = deliver(dovecot.port, 6)[0]
        assert code == 552 and b"5.2.2" in text
        assert dovecot.quota(ALICE)["MESSAGE"] == (5, 5)
    finally:
        dovecot.stop()
    assert len(kw.messages(ALICE)) == 5
