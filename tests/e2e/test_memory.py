"""A 100 MB message streams to disk: the server's memory barely moves (issue 2, point 4)."""

from __future__ import annotations

import socket
from pathlib import Path

from .conftest import make_kittiwake


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_100_mb_message_raises_memory_by_a_few_mb(tmp_path: Path) -> None:
    kw = make_kittiwake(
        tmp_path, "<maxmessagesize>200M</maxmessagesize>", users=("alice@kittiwake.test",)
    )
    kw.start()
    try:
        assert kw.proc is not None
        # Warm up: one ordinary message, so that everything lazily loaded is loaded.
        line = b"x" * 998 + b"\r\n"
        with socket.create_connection(("127.0.0.1", kw.port), timeout=60) as s:
            f = s.makefile("rb")

            def reply() -> bytes:
                while True:
                    got = f.readline()
                    if got[3:4] != b"-":
                        return got

            reply()
            s.sendall(b"EHLO big.test\r\n")
            reply()
            for size_lines in (10, 100 * 1024 * 1024 // len(line)):
                s.sendall(b"MAIL FROM:<big@remote.test>\r\n")
                assert reply().startswith(b"250")
                s.sendall(b"RCPT TO:<alice@kittiwake.test>\r\n")
                assert reply().startswith(b"250")
                s.sendall(b"DATA\r\n")
                assert reply().startswith(b"354")
                if size_lines == 10:
                    s.sendall(b"Subject: small\r\n\r\n" + line * size_lines + b".\r\n")
                    assert reply().startswith(b"250")
                    before = _rss_peak_kib(kw.proc.pid)
                    continue
                s.sendall(b"Subject: big\r\n\r\n")
                chunk = line * 1024
                for _ in range(size_lines // 1024):
                    s.sendall(chunk)
                s.sendall(b".\r\n")
                assert reply().startswith(b"250 2.0.0")
            after = _rss_peak_kib(kw.proc.pid)
        grown_mib = (after - before) / 1024
        assert grown_mib < 8, f"peak RSS grew by {grown_mib:.1f} MiB for a 100 MB message"
        msgs = kw.wait_messages("alice@kittiwake.test", 2, timeout=60)
        assert max(len(m) for m in msgs) > 100 * 1024 * 1024 - 2 * len(chunk)
    finally:
        assert kw.stop() == 0
