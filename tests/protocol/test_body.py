"""The message text readers, row by row (chasquid ``dotreader_test.go``), and the SMTP
smuggling sequences through the whole core.

Each reader row runs with the input whole and byte by byte; both must agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from kittiwake.protocol import CoreSettings, Mode
from kittiwake.protocol._body import MAX_PENDING_LINE, BareLineEnding, ChunkReader, DotReader

from .transcripts import HOSTNAME, Outcome, chunkings, run, split_replies

BARE = BareLineEnding


# ---- DATA: DotReader ------------------------------------------------------------------


@dataclass(frozen=True)
class Dot:
    """What the DATA reader makes of ``data``: the message text and either the octets
    left after CRLF.CRLF (``rest``), None when the end has not come, or ``BARE``."""

    data: bytes
    text: bytes = b""
    rest: bytes | type[BareLineEnding] | None = b""


LONG = MAX_PENDING_LINE + 500

DOT_ROWS = {
    # the end of the text
    "dot alone": Dot(b".\r\n", b""),
    "one line": Dot(b"hello\r\n.\r\n", b"hello\r\n"),
    "empty lines": Dot(b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    "what follows the end is left": Dot(
        b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", b"a\r\n", b"MAIL FROM:<x@y>\r\n"
    ),
    "second dot is left": Dot(b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n"),
    "a bare CR after the end is not text": Dot(b"a\r\n.\r\n\r", b"a\r\n", b"\r"),
    # dot-stuffing undone (RFC 5321 4.5.2)
    "line of two dots": Dot(b"..\r\n.\r\n", b".\r\n"),
    "leading dot on the first line": Dot(b"..leading\r\n.\r\n", b".leading\r\n"),
    "stuffed lines": Dot(b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
    "unstuffed leading dot dropped": Dot(b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
    "dot space is not the end": Dot(b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
    "dot inside a line stays": Dot(b"a.b.\r\n.\r\n", b"a.b.\r\n"),
    # octets that are not line endings pass (NUL too: RFC 5322 obs-body; see the report)
    "NUL allowed": Dot(b"a\x00b\r\n\x00\r\n.\r\n", b"a\x00b\r\n\x00\r\n"),
    "NUL before a dot is not the end": Dot(b"a\r\n\x00.\r\n.\r\n", b"a\r\n\x00.\r\n"),
    "8-bit": Dot(b"\xff\xfe\x80\r\n.\r\n", b"\xff\xfe\x80\r\n"),
    # long lines are handed on in pieces
    "long line": Dot(b"x" * LONG + b"\r\n.\r\n", b"x" * LONG + b"\r\n"),
    "long line with a leading dot": Dot(b"." + b"y" * LONG + b"\r\n.\r\n", b"y" * LONG + b"\r\n"),
    "CR at the piece boundary": Dot(
        b"z" * (MAX_PENDING_LINE - 1) + b"\r\n.\r\n", b"z" * (MAX_PENDING_LINE - 1) + b"\r\n"
    ),
    "long line bare CR": Dot(b"x" * LONG + b"\ry\r\n.\r\n", rest=BARE),
    "long line bare CR at the boundary": Dot(
        b"x" * (MAX_PENDING_LINE - 1) + b"\ry\r\n.\r\n", rest=BARE
    ),
    # not ended yet
    "no end": Dot(b"a\r\n", b"a\r\n", None),
    "dot without CRLF": Dot(b"a\r\n.", b"a\r\n", None),
    "dot CR": Dot(b"a\r\n.\r", b"a\r\n", None),
    "nothing": Dot(b"", b"", None),
    "NUL dot CRLF does not end": Dot(b"a\r\n\x00.\r\n", b"a\r\n\x00.\r\n", None),
    # SMTP smuggling and other bare line endings (RFC 5321 2.3.8): refused
    "LF . CRLF": Dot(b"a\n.\r\n", rest=BARE),
    "CR . CRLF": Dot(b"a\r.\r\n", rest=BARE),
    "LF . LF": Dot(b"a\n.\n", rest=BARE),
    "CRLF . LF": Dot(b"a\r\n.\n", rest=BARE),
    "CRLF . CR then text": Dot(b"a\r\n.\rMAIL FROM:<x@y>\r\n", rest=BARE),
    "CR . CR then text": Dot(b"a\r.\rMAIL FROM:<x@y>\r\n", rest=BARE),
    "LF . CR then text": Dot(b"a\n.\rb\r\n", rest=BARE),
    "dot LF at the start": Dot(b".\nMAIL FROM:<x@y>\r\n", rest=BARE),
    "LF at the start": Dot(b"\n.\r\n", rest=BARE),
    "bare CR": Dot(b"a\rb\r\n.\r\n", rest=BARE),
    "bare LF": Dot(b"a\nb\r\n.\r\n", rest=BARE),
    "CR CR LF": Dot(b"a\r\r\n.\r\n", rest=BARE),
    "LF CR LF": Dot(b"a\n\r\n.\r\n", rest=BARE),
    "empty line then LF": Dot(b"\r\n\n.\r\n", rest=BARE),
    "bare LF in an unended message": Dot(b"a\nb\r\n", rest=BARE),
    # regression: a CR followed by anything but LF is bare at once, not only when the line
    # ends or reaches 64K, so the answer does not depend on how the reads fell
    "bare CR in an unfinished line": Dot(b"a\r\nb\rc", rest=BARE),
    "dot CR text, unfinished": Dot(b"a\r\n.\rMAIL", rest=BARE),
    "bare CR after a long piece": Dot(b"x" * LONG + b"\ry", rest=BARE),
}


def dot_read(pieces: Sequence[bytes]) -> tuple[bytes, bytes | type[BareLineEnding] | None]:
    """Feed ``pieces`` to a DotReader the way the core does: read until it has
    nothing more to give, then take the next piece."""
    reader, buf, text = DotReader(), bytearray(), b""
    for i, piece in enumerate(pieces):
        buf += piece
        while True:
            try:
                got, done = reader.read(buf)
            except BareLineEnding:
                return text, BARE
            text += got
            if done:
                return text, bytes(buf) + b"".join(pieces[i + 1 :])
            if not got:
                break
    return text, None


@pytest.mark.parametrize("row", DOT_ROWS.values(), ids=DOT_ROWS.keys())
@pytest.mark.parametrize("way", ["whole", "bytes"])
def test_dot_reader(row: Dot, way: str) -> None:
    pieces = [row.data] if way == "whole" else [row.data[i : i + 1] for i in range(len(row.data))]
    text, rest = dot_read(pieces)
    assert rest == row.rest
    if rest is not BARE:
        assert text == row.text


# ---- BDAT: ChunkReader ----------------------------------------------------------------


@dataclass(frozen=True)
class Chunks:
    """BDAT chunks of one message; ``last``: the final one is BDAT ... LAST."""

    chunks: tuple[bytes, ...]
    last: bool = True
    ok: bool = True


CHUNK_ROWS = {
    "one chunk": Chunks((b"a\r\nb\r\n",)),
    "CR | LF across chunks": Chunks((b"ab\r", b"\ncd\r\n")),
    "CR | LF, one octet chunks": Chunks((b"\r", b"\n", b"\r", b"\n")),
    "no end-of-data scan": Chunks((b"\r\n.\r\n", b"..\r\n")),
    "binary": Chunks((b"\x00\xff\r\n", b"\x80")),
    "empty chunks": Chunks((b"", b"")),
    "no final CRLF": Chunks((b"abc",)),
    "CR pending, not last": Chunks((b"ab\r",), last=False),
    "lone CR ends the last chunk": Chunks((b"ab\r",), ok=False),
    "CR then BDAT 0 LAST": Chunks((b"ab\r", b""), ok=False),
    "CR | not LF": Chunks((b"ab\r", b"x\r\n"), ok=False),
    "CR | CR LF": Chunks((b"ab\r", b"\r\n"), ok=False),
    "LF at a chunk start": Chunks((b"ab", b"\ncd"), ok=False),
    "LF first": Chunks((b"\n",), ok=False),
    "bare LF": Chunks((b"a\nb",), ok=False),
    "bare CR": Chunks((b"a\rb",), ok=False),
    "LF . CRLF": Chunks((b"a\n.\r\n",), ok=False),
    "CR LF LF across chunks": Chunks((b"a\r", b"\n\n"), ok=False),
}


def chunk_read(chunks: Sequence[bytes], last: bool, *, bytewise: bool) -> bytes | None:
    """The text the ChunkReader hands on, or None on a bare line ending."""
    reader, text = ChunkReader(), b""
    try:
        for chunk in chunks:
            reader.start(len(chunk))
            pieces = [chunk[i : i + 1] for i in range(len(chunk))] if bytewise else [chunk]
            for piece in pieces:
                text += reader.read(bytearray(piece))
            assert reader.remaining == 0
        if last:
            reader.finish()
    except BareLineEnding:
        return None
    return text


@pytest.mark.parametrize("row", CHUNK_ROWS.values(), ids=CHUNK_ROWS.keys())
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytes"])
def test_chunk_reader(row: Chunks, bytewise: bool) -> None:
    text = chunk_read(row.chunks, row.last, bytewise=bytewise)
    assert text == (b"".join(row.chunks) if row.ok else None)


def test_chunk_reader_takes_only_its_size() -> None:
    reader = ChunkReader()
    reader.start(3)
    buf = bytearray(b"abcNOOP\r\n")
    assert reader.read(buf) == b"abc"
    assert buf == b"NOOP\r\n" and reader.remaining == 0


# ---- smuggling through the whole core -------------------------------------------------

OPEN = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n"
SMUGGLED = (
    b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
)
ENDS = [b"\r\n", b"\r", b"\n"]
# Every <x>.<y> with x, y in {CRLF, CR, LF} except the real CRLF.CRLF; then the
# bare CR/LF mid-line and the same at the very start of the text.
SEQUENCES = [x + b"." + y for x in ENDS for y in ENDS if (x, y) != (b"\r\n", b"\r\n")]
SEQUENCES += [b"\r", b"\n", b"\r\r\n", b"\n\r\n", b"\r\n\r.\r\n", b"\r\n\n.\r\n"]


def _ids(seqs: Sequence[bytes]) -> list[str]:
    return [s.decode().replace("\r", "CR").replace("\n", "LF") for s in seqs]


def _runs(data: bytes, mode: Mode = Mode.SMTP) -> list[tuple[str, Outcome]]:
    settings = CoreSettings(HOSTNAME, mode=mode)
    return [(way, run(settings, chunks)) for way, chunks in chunkings(data, len(data))]


def _assert_refused(way: str, outcome: Outcome) -> None:
    last = split_replies(outcome.output)[-1]
    assert last[0].startswith("554 5.6.11 "), (way, last)
    assert outcome.closed
    assert "MessageComplete" not in outcome.events, way
    assert outcome.events.count("MailFrom") == 1, way  # the smuggled MAIL never ran
    assert outcome.events[-2:] == ["MessageAborted", "ConnectionClosed"], way
    assert outcome.messages == []


@pytest.mark.parametrize("seq", SEQUENCES, ids=_ids(SEQUENCES))
@pytest.mark.parametrize("at_start", [False, True], ids=["after-text", "at-start"])
@pytest.mark.parametrize("mode", [Mode.SMTP, Mode.LMTP])
def test_smuggling_in_data_is_refused(seq: bytes, at_start: bool, mode: Mode) -> None:
    hello = b"LHLO" if mode is Mode.LMTP else b"EHLO"
    text = (b"" if at_start else b"Subject: x\r\n\r\nhello") + seq
    data = hello + OPEN[4:] + b"DATA\r\n" + text + SMUGGLED + b"\r\n.\r\nNOOP\r\n"
    for way, outcome in _runs(data, mode):
        _assert_refused(way, outcome)


@pytest.mark.parametrize("seq", SEQUENCES, ids=_ids(SEQUENCES))
def test_smuggling_in_bdat_is_refused(seq: bytes) -> None:
    text = b"hello" + seq + SMUGGLED
    data = OPEN + b"BDAT %d LAST\r\n" % len(text) + text + b"NOOP\r\n"
    for way, outcome in _runs(data):
        _assert_refused(way, outcome)


NUL_SEQUENCES = [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"]


@pytest.mark.parametrize("seq", NUL_SEQUENCES, ids=["CRLF-NUL-dot-CRLF", "CRLF-dot-NUL-CRLF"])
def test_nul_sequences_are_text(seq: bytes) -> None:
    """A NUL next to the dot ends nothing: one message, the "smuggled" part inside it."""
    data = OPEN + b"DATA\r\nhello" + seq + SMUGGLED + b"QUIT\r\n"
    for way, outcome in _runs(data):
        assert outcome.events.count("MessageComplete") == 1, way
        assert outcome.events.count("MailFrom") == 1, way
        [message] = outcome.messages
        assert message.sender == "a@remote.test"
        assert b"MAIL FROM:<smuggled@evil.test>" in message.data
        assert split_replies(outcome.output)[-1] == ["221 2.0.0 Bye"]


def test_real_end_then_pipelined_mail_runs() -> None:
    """The control: CRLF.CRLF ends the text and the MAIL after it is a command."""
    data = OPEN + b"DATA\r\nhello" + b"\r\n.\r\n" + SMUGGLED + b"QUIT\r\n"
    for way, outcome in _runs(data):
        assert outcome.events.count("MessageComplete") == 2, way
        assert [m.sender for m in outcome.messages] == ["a@remote.test", "smuggled@evil.test"]
