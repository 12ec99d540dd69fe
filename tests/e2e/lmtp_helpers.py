"""A kittiwake with an LMTP listener (TCP and a Unix socket), for the LMTP end-to-end tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import Kittiwake, free_port, make_kittiwake

USERS = ("alice@kittiwake.test", "bob@kittiwake.test", "carol@kittiwake.test")


@dataclass
class LmtpServer:
    kw: Kittiwake
    port: int
    socket_path: Path


def lmtpserver_xml(port: int, socket_path: Path, extra: str = "") -> str:
    return f"""<?xml version="1.0"?>
<lmtpservers>
  <lmtpserver enabled="true">
    <jmxName>lmtpserver</jmxName>
    <bind>127.0.0.1:{port},unix:{socket_path}</bind>
    <connectiontimeout>1200</connectiontimeout>
    <helloName autodetect="false">mailbox.kittiwake.test</helloName>
    {extra}
    <handlerchain>
      <handler class="org.apache.james.lmtpserver.CoreCmdHandlerLoader"/>
    </handlerchain>
  </lmtpserver>
</lmtpservers>
"""


def make_lmtp(tmp_path: Path, extra: str = "") -> LmtpServer:
    kw = make_kittiwake(tmp_path, users=USERS)
    port = free_port()
    socket_path = tmp_path / "lmtp.sock"
    (kw.conf / "lmtpserver.xml").write_text(lmtpserver_xml(port, socket_path, extra))
    return LmtpServer(kw, port, socket_path)


def running(server: LmtpServer) -> Iterator[LmtpServer]:
    server.kw.start()
    wait_for_lmtp(server)
    yield server
    if server.kw.proc is not None:
        code = server.kw.stop()
        assert code == 0, server.kw.log_text()[-3000:]


def wait_for_lmtp(server: LmtpServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    proc = server.kw.proc
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"kittiwake exited: {server.kw.log_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no LMTP greeting on {server.port}: {server.kw.log_text()[-3000:]}")


class Wire:
    """A raw LMTP client: send lines, read whole replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    @classmethod
    def tcp(cls, port: int) -> Wire:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=10))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One reply, its lines joined with newlines (CRLF removed)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.rstrip(b"\r\n").decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def close(self) -> None:
        self.file.close()
        self.sock.close()
