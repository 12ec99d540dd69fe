"""Raw-socket tests: smuggling, line limits, size limits, connection limits, shutdown."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from kittiwake.queue.spool import list_spool

from .conftest import Kittiwake, make_kittiwake
from .raw_smtp import RawSmtp


class Wire(RawSmtp):
    """A raw SMTP client that reads whole replies."""

    def __init__(self, port: int) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=10))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, timeout: float = 10.0) -> bytes:
        """One whole (possibly multi-line) reply, or b"" at EOF."""
        return self.read_reply(timeout)

    def quiet(self, seconds: float) -> bytes:
        """Whatever arrives within ``seconds`` (expected: nothing)."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return b""


def _open(kw: Kittiwake) -> Wire:
    w = Wire(kw.port)
    assert w.reply().startswith(b"220 ")
    w.send(b"EHLO wire.test\r\n")
    assert w.reply().startswith(b"250-")
    return w


SMUGGLING = [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r", b"\n.\r", b"\r\n.\r"]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
def test_smuggling_sequences_are_refused(kittiwake: Kittiwake, sequence: bytes) -> None:
    w = _open(kittiwake)
    w.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
    assert w.reply().startswith(b"250 2.1.0")
    assert w.reply().startswith(b"250 2.1.5")
    assert w.reply().startswith(b"354")
    w.send(b"Subject: first\r\n\r\nbody" + sequence)
    w.send(
        b"MAIL FROM:<smuggled@remote.test>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    reply = w.reply()
    assert reply[:1] == b"5", reply
    assert w.closed()
    time.sleep(0.3)
    assert kittiwake.messages("alice@kittiwake.test") == []


def test_bare_lf_in_command_closes(kittiwake: Kittiwake) -> None:
    w = _open(kittiwake)
    w.send(b"NOOP\nNOOP\r\n")
    assert w.reply().startswith(b"500 5.5.2")
    assert w.closed()


def test_over_long_command_line_keeps_session(kittiwake: Kittiwake) -> None:
    w = _open(kittiwake)
    w.send(b"NOOP " + b"x" * 20000 + b"\r\nNOOP\r\n")
    assert w.reply().startswith(b"500 5.5.2")
    assert w.reply().startswith(b"250 2.0.0")


def test_pipelined_commands_answered_in_order(kittiwake: Kittiwake) -> None:
    w = _open(kittiwake)
    w.send(
        b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@kittiwake.test>\r\n"
        b"RCPT TO:<alice@kittiwake.test>\r\nRSET\r\nNOOP\r\nVRFY alice\r\nEXPN list\r\n"
    )
    codes = [w.reply()[:9] for _ in range(7)]
    assert codes == [
        b"250 2.1.0",
        b"550 5.1.1",
        b"250 2.1.5",
        b"250 2.0.0",
        b"250 2.0.0",
        b"252 2.5.2",
        b"502 5.5.1",
    ]


def test_bdat_delivers(kittiwake: Kittiwake) -> None:
    w = _open(kittiwake)
    part1 = b"Subject: chunks\r\n\r\nfirst "
    part2 = b"second\r\n.not stuffed\r\n"
    w.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@kittiwake.test>\r\n")
    w.send(b"BDAT %d\r\n" % len(part1) + part1)
    w.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert [w.reply()[:9] for _ in range(4)] == [
        b"250 2.1.0",
        b"250 2.1.5",
        b"250 2.0.0",
        b"250 2.0.0",
    ]
    (msg,) = kittiwake.wait_messages("alice@kittiwake.test", 1)
    assert msg.endswith(part1 + part2)


def test_message_over_size_limit_gets_552_and_nothing_queued(tmp_path: Path) -> None:
    kw = make_kittiwake(
        tmp_path, "<maxmessagesize>1</maxmessagesize>", users=("alice@kittiwake.test",)
    )
    kw.start()
    try:
        w = _open(kw)
        w.send(b"MAIL FROM:<a@remote.test> SIZE=5000\r\n")
        assert w.reply().startswith(b"552 5.3.4")
        w.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
        for _ in range(3):
            w.reply()
        w.send(b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n.\r\n")
        assert w.reply().startswith(b"552 5.3.4")
        w.send(b"NOOP\r\n")
        assert w.reply().startswith(b"250")
        time.sleep(0.3)
        assert kw.messages("alice@kittiwake.test") == []
        assert list_spool(kw.data / "spool") == []
    finally:
        assert kw.stop() == 0


def test_connection_limits_answer_421(tmp_path: Path) -> None:
    kw = make_kittiwake(
        tmp_path,
        "<connectionLimit>5</connectionLimit><connectionLimitPerIP>2</connectionLimitPerIP>",
    )
    kw.start()
    try:
        a, b = Wire(kw.port), Wire(kw.port)
        assert a.reply().startswith(b"220") and b.reply().startswith(b"220")
        c = Wire(kw.port)
        assert c.reply().startswith(b"421 4.7.0")
        assert c.closed()
        a.close()
        time.sleep(0.2)
        d = Wire(kw.port)
        assert d.reply().startswith(b"220")
    finally:
        assert kw.stop() == 0


def test_sigterm_421_to_idle_and_lets_transaction_finish(tmp_path: Path) -> None:
    kw = make_kittiwake(tmp_path, users=("alice@kittiwake.test",))
    kw.start()
    idle = _open(kw)
    busy = _open(kw)
    busy.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
    for _ in range(3):
        busy.reply()
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n")
    assert kw.proc is not None
    kw.proc.terminate()
    assert idle.reply().startswith(b"421 4.3.2")
    assert idle.closed()
    time.sleep(0.3)
    busy.send(b"part two\r\n.\r\n")
    assert busy.reply().startswith(b"250 2.0.0")
    assert busy.reply().startswith(b"421 4.3.2")
    assert kw.proc.wait(timeout=40) == 0
    kw.proc = None
    # The message accepted during shutdown is delivered at the next start at the latest.
    kw.start()
    kw.wait_messages("alice@kittiwake.test", 1)
    assert kw.stop() == 0
