"""One test per bug found in the protocol core, named after the bug."""

from __future__ import annotations

from typing import Any

import pytest

from kittiwake.protocol import CoreSettings, Mode, State
from kittiwake.protocol._address import _DOT_STRING

from .transcripts import HOSTNAME, Session, chunkings, run

OPEN = ("EHLO client.test", "MAIL FROM:<a@remote.test>", "RCPT TO:<alice@local.test>")


def opened(mode: Mode = Mode.SMTP, **kw: Any) -> Session:
    s = Session(mode=mode, **kw)
    hello = "LHLO client.test" if mode is Mode.LMTP else OPEN[0]
    s.lines(hello, *OPEN[1:])
    return s


@pytest.mark.parametrize("value", ["²", "¹²", "٣", "١٠", "1²"])
def test_bug_unicode_digit_in_size_crashed_the_core(value: str) -> None:
    """``str.isdigit`` took "²" (then ``int()`` raised ValueError out of the core) and
    "١٠" (read as SIZE=10). SIZE is ASCII digits (RFC 1870 1*DIGIT)."""
    s = Session()
    s.lines("EHLO client.test")
    assert s.lines(f"MAIL FROM:<a@remote.test> SIZE={value}") == [["501 5.5.4 Bad parameter value"]]
    assert s.conn.state is State.GREETED


@pytest.mark.parametrize("value", ["²", "٣ LAST", "١٠"])
def test_bug_unicode_digit_in_bdat_size_crashed_the_core(value: str) -> None:
    s = opened()
    assert s.lines(f"BDAT {value}") == [["501 5.5.4 Syntax: BDAT <size> [LAST]"]]
    assert s.conn.closed


@pytest.mark.parametrize("local", ["jörg", "ünïcødé", "日本", "a.ö", "x-ü"])
def test_bug_utf8_local_part_refused_with_smtputf8(local: str) -> None:
    """``[{_ATEXT}\\u0080-...]``: _ATEXT ends in "-", so the class held the range
    "~-\\u0080" and no character above U+0080: every UTF-8 local part got 501."""
    assert _DOT_STRING.fullmatch(local)
    s = Session()
    s.lines("EHLO client.test")
    [reply] = s.lines(f"MAIL FROM:<{local}@bücher.test> SMTPUTF8")
    assert reply[0].startswith("250 2.1.0 "), reply
    [reply] = s.lines(f"RCPT TO:<{local}@local.test>")
    assert reply[0][:10] in ("250 2.1.5 ", "550 5.1.1 "), reply  # parsed; the app decides


def test_bug_utf8_range_let_del_into_local_parts() -> None:
    """The same range "~-\\u0080" took DEL (0x7f) as atext."""
    assert _DOT_STRING.fullmatch("a\x7fb") is None
    assert _DOT_STRING.fullmatch("a-b") is not None  # "-" is atext still


def test_bug_lmtp_too_big_data_answered_once() -> None:
    """RFC 2033 4.2: after the final dot one reply per accepted recipient, also for a
    message over the size limit; one 552 for three recipients left the client waiting."""
    s = opened(Mode.LMTP, max_message_size=5)
    s.lines("RCPT TO:<bob@local.test>", "RCPT TO:<nobody@local.test>", "RCPT TO:<carol@local.test>")
    s.lines("DATA")
    got = s.lines("too long for five", ".")
    too_big = "552 5.3.4 <{}@local.test> Message size exceeds fixed maximum message size"
    assert got == [[too_big.format(r)] for r in ("alice", "bob", "carol")]
    assert s.app.events[-1] == "MessageAborted"
    assert s.lines("RCPT TO:<bob@local.test>") == [["503 5.5.1 Need MAIL before RCPT"]]


def test_bug_lmtp_too_big_bdat_last_answered_once() -> None:
    s = opened(Mode.LMTP, max_message_size=5)
    s.lines("RCPT TO:<bob@local.test>")
    got = s.feed(b"BDAT 8 LAST\r\n12345678")
    too_big = "552 5.3.4 <{}@local.test> Message size exceeds fixed maximum message size"
    assert got == [[too_big.format(r)] for r in ("alice", "bob")]


def test_lmtp_too_big_non_last_chunk_answered_once() -> None:
    """A chunk that is not LAST gets one reply in LMTP too (only the end is per recipient)."""
    s = opened(Mode.LMTP, max_message_size=5)
    s.lines("RCPT TO:<bob@local.test>")
    got = s.feed(b"BDAT 8\r\n12345678")
    assert got == [["552 5.3.4 Message size exceeds fixed maximum message size"]]
    assert s.feed(b"BDAT 0 LAST\r\n") == [["503 5.5.1 Need MAIL before RCPT"]]


@pytest.mark.parametrize(
    "after",
    [b"", b"BDAT ten\r\n", b"NOOP\nNOOP\r\n", b"NOOP\rX"],
    ids=["eof", "bad-bdat", "bare-lf-command", "bare-cr-command"],
)
def test_bug_no_message_aborted_when_closed_between_bdat_chunks(after: bytes) -> None:
    """EOF or a fatal command error between two BDAT chunks closed the connection with
    no MessageAborted, while the same inside a chunk gave one: the application holding
    the text so far was not told the message was given up."""
    s = opened()
    assert s.feed(b"BDAT 4\r\nabc\r") == [["250 2.0.0 4 octets received"]]
    s.feed(after)
    s.feed(b"")
    assert s.app.events[-2:] == ["MessageAborted", "ConnectionClosed"]
    assert s.app.messages == []


def test_eof_outside_a_message_is_no_abort() -> None:
    s = opened()
    s.feed(b"")
    assert "MessageAborted" not in s.app.events


def _same_everywhere(settings: CoreSettings, data: bytes) -> bytes:
    outcomes = [(way, run(settings, chunks)) for way, chunks in chunkings(data, 1)]
    first = outcomes[0][1]
    for way, outcome in outcomes:
        assert outcome.same() == first.same(), way
    return first.output


def test_bug_line_too_long_reply_depended_on_read_sizes() -> None:
    """An over-long line was answered 500 as soon as the limit was passed; when the rest
    of the line then held a bare CR, a client writing in small pieces got "Line too
    long" and then the close, one writing at once only the close. Now the answer comes
    when the line ends."""
    cfg = CoreSettings(HOSTNAME, max_line_length=20)
    out = _same_everywhere(cfg, b"EHLO c.test\r\n" + b"A" * 30 + b"\rB\r\nNOOP\r\n")
    assert b"Line too long" not in out
    assert out.endswith(
        b"500 5.5.2 Bare CR or LF not allowed, lines must end with CRLF (RFC 5321 2.3.8)\r\n"
    )
    # cut off before its end, an over-long line is never answered, in any cutting
    out = _same_everywhere(cfg, b"EHLO c.test\r\n" + b"A" * 30)
    assert b"Line too long" not in out
    out = _same_everywhere(cfg, b"EHLO c.test\r\n" + b"A" * 30 + b"\r\nNOOP\r\n")
    assert out.endswith(b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n")


def test_bug_bare_cr_in_unfinished_line_depended_on_read_sizes() -> None:
    """Found by test_properties: a CR followed by something other than LF in a command
    line not yet ended was only looked for when the line passed the limit, so at EOF one
    cutting answered 500 and another did not."""
    cfg = CoreSettings(HOSTNAME, max_line_length=24)
    out = _same_everywhere(cfg, b"\x00" * 24 + b"\r\r")
    assert out.endswith(b"(RFC 5321 2.3.8)\r\n")
    s = Session()
    assert s.feed(b"NOOP\rX")[0][0].startswith("500 5.5.2 Bare CR")
    assert s.conn.closed


def test_bug_bare_cr_in_unfinished_data_line_depended_on_read_sizes() -> None:
    """The same in DATA: a bare CR in a line without LF was found only at 64K."""
    s = opened()
    s.lines("DATA")
    [reply] = s.feed(b"text\r\n.\rMAIL FROM:<x@evil.test>")
    assert reply[0].startswith("554 5.6.11 ")
    assert s.app.events[-2:] == ["MessageAborted", "ConnectionClosed"]
    assert s.conn.closed


def test_bug_bare_postmaster_was_accepted_as_sender() -> None:
    """RFC 5321 4.1.1.3 allows a domain-less <postmaster> in RCPT only."""
    s = Session()
    s.lines("EHLO client.test")
    assert s.lines("MAIL FROM:<postmaster>") == [["501 5.1.7 Bad sender address syntax"]]
    assert s.conn.state is State.GREETED


def test_bug_ehlo_keyword_lines_carried_the_apps_status_code() -> None:
    """A status code in the app's EHLO reply must not prefix every keyword line."""
    from kittiwake.protocol import Hello, Reply, ServerConnection

    conn = ServerConnection(CoreSettings(HOSTNAME))
    conn.receive_data(b"EHLO client.test\r\n")
    event = conn.next_event()
    assert isinstance(event, Hello)
    conn.send(Reply(250, "2.0.0", "hello"))
    lines = conn.data_to_send().decode().split("\r\n")
    assert lines[0] == "250-hello" and lines[1] == "250-PIPELINING"
