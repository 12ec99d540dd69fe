"""A raw SMTP client for tests that need exact octets: it sends what it is given and
reads whole replies (RFC 5321 4.2.1: the last line has a space after the code)."""

from __future__ import annotations

import socket


class RawSmtp:
    """A socket and what it has read past the last reply."""

    #: a reset connection reads as end of file (b"") instead of raising
    reset_is_eof = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read_reply(self, timeout: float | None = None) -> bytes:
        """One whole (possibly multi-line) reply with its final CRLF, or b"" at EOF."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return b"\r\n".join(lines[: i + 1]) + b"\r\n"
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                if not self.reset_is_eof:
                    raise
                chunk = b""
            if not chunk:
                return b""
            self.buf += chunk

    def read_text(self, timeout: float | None = None) -> str:
        """One reply as text, lines joined by CRLF, without the final CRLF ("" at EOF)."""
        return self.read_reply(timeout)[:-2].decode()

    def cmd(self, line: str) -> str:
        """Send one command line, return the reply as text."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read_text()

    def closed(self) -> bool:
        """The server closed the connection (within 5 s)."""
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
