"""A real kittiwake process on loopback, started per test with its own conf and data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kittiwake.logsetup import FLUSH_INTERVAL

KITTIWAKE = [sys.executable, "-m", "kittiwake.cli"]
#: Tests run as root (CI containers) keep root: their data directories live in root's
#: private temporary directory. tests/e2e/test_tls.py covers the drop to another user.
AS_ROOT = {"KITTIWAKE_USER": "root"} if os.geteuid() == 0 else {}


_handed_out: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and never handed out before in this test run: a test that asks for
    several at once gets distinct ones (the kernel may offer a just-closed port again)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _handed_out:
            _handed_out.add((host, port))
            return port


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kittiwake exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(512)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"kittiwake did not listen on {port} within {timeout}s")


def smtpserver_xml(
    port: int, extra: str = "", hello: str = "mx.kittiwake.test", host: str = "127.0.0.1"
) -> str:
    return f"""<?xml version="1.0"?>
<smtpservers>
  <smtpserver enabled="true">
    <jmxName>smtpserver</jmxName>
    <bind>{host}:{port}</bind>
    <helloName autodetect="false">{hello}</helloName>
    {extra}
  </smtpserver>
</smtpservers>
"""


DOMAINLIST = """<?xml version="1.0"?>
<domainlist>
  <domainnames>
    <domainname>kittiwake.test</domainname>
    <domainname>bücher.test</domainname>
  </domainnames>
  <defaultDomain>kittiwake.test</defaultDomain>
</domainlist>
"""


@dataclass
class Kittiwake:
    """A kittiwake process under test."""

    conf: Path
    data: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: the listener's address (other 127.x addresses: a peer of another kittiwake)
    host: str = "127.0.0.1"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KITTIWAKE, *args, "--conf", str(self.conf), "--data", str(self.data)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def add_user(self, address: str, password: str = "secret") -> None:
        result = self.cli("user", "add", address, stdin=password + "\n")
        assert result.returncode == 0, result.stderr

    def start(self, wait: bool = True) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*KITTIWAKE, "serve", "--conf", str(self.conf), "--data", str(self.data)],
            stdout=logf,
            stderr=logf,
            env={**AS_ROOT, **os.environ, **self.env},
        )
        if wait:
            wait_for_port(self.port, self.proc, host=self.host)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def maildir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.data / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        box = self.maildir(address)
        out = []
        for sub in ("new", "cur"):
            d = box / sub
            if d.is_dir():
                out += [p.read_bytes() for p in sorted(d.iterdir())]
        return out

    def wait_messages(self, address: str, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages(address)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.02)
        raise AssertionError(f"{address}: {len(self.messages(address))} messages, want {count}")

    def log_text(self) -> str:
        """The log so far. The server writes its info lines in batches (logsetup.py), so
        a running one is given the time to write what it has."""
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(FLUSH_INTERVAL + 0.1)
        return self.log.read_text(errors="replace")


def make_kittiwake(
    tmp_path: Path,
    extra: str = "",
    users: tuple[str, ...] = (),
    *,
    host: str = "127.0.0.1",
    hello: str = "mx.kittiwake.test",
    domainlist: str = DOMAINLIST,
) -> Kittiwake:
    conf = tmp_path / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    (conf / "smtpserver.xml").write_text(smtpserver_xml(port, extra, hello, host))
    (conf / "domainlist.xml").write_text(domainlist)
    kw = Kittiwake(
        conf=conf, data=tmp_path / "data", port=port, log=tmp_path / "kittiwake.log", host=host
    )
    for user in users:
        kw.add_user(user)
    return kw


@pytest.fixture
def kittiwake(tmp_path: Path) -> Iterator[Kittiwake]:
    """A running kittiwake with users alice@ and bob@kittiwake.test."""
    kw = make_kittiwake(tmp_path, users=("alice@kittiwake.test", "bob@kittiwake.test"))
    kw.start()
    yield kw
    if kw.proc is not None:
        code = kw.stop()
        assert code == 0, kw.log_text()[-3000:]
