"""Every transcript in ``transcripts/``, through the core in every chunking.

Each way of cutting the client's octets must give the replies in the file, the message
events in the file, and the same replies, messages and events as every other way
(h11 ``tests/test_io.py``).
"""

from __future__ import annotations

import pytest

from kittiwake.protocol import Mode

from .transcripts import (
    TRANSCRIPT_DIR,
    Transcript,
    check,
    check_turns,
    load,
    match_reply,
    parse,
    split_replies,
)

FILES = sorted(TRANSCRIPT_DIR.glob("*.txt"))
WAYS = ["one", "bytes", "random0", "random1", "random2"]


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.stem)
def transcript(request: pytest.FixtureRequest) -> Transcript:
    path = request.param
    return load(path)


def test_there_are_transcripts() -> None:
    assert len(FILES) >= 30


def test_transcript(transcript: Transcript) -> None:
    outcomes = {}
    for way, chunks in transcript.chunkings():
        outcomes[way] = check(transcript, way, chunks)
    outcomes["turns"] = check_turns(transcript)
    assert list(outcomes)[:5] == WAYS
    first = outcomes["one"].same()
    for way, outcome in outcomes.items():
        assert outcome.same() == first, f"{transcript.name}: {way} differs from one chunk"


# ---- the runner itself ----------------------------------------------------------------

EHLO_REPLY = ["250-mx.test", "250-PIPELINING", "250 CHUNKING"]


@pytest.mark.parametrize(
    "pattern, reply, want",
    [
        (["250 *"], EHLO_REPLY, True),
        (EHLO_REPLY, EHLO_REPLY, True),
        (["250-mx.test", "250 *"], EHLO_REPLY, True),
        (["250 mx.test"], EHLO_REPLY, False),
        (["250 2.1.0 *"], ["250 2.1.5 <a@b> ok"], False),
        (["250 2.1.5 *"], ["250 2.1.5 <a@b> ok"], True),
        (["503 5.5.1 Need MAIL before RCPT"], ["503 5.5.1 Need MAIL before RCPT"], True),
        (["503 5.5.1 Need MAIL"], ["503 5.5.1 Need MAIL before RCPT"], False),
        (["5* (x.y)"], ["554 (x.y)"], True),
    ],
)
def test_match_reply(pattern: list[str], reply: list[str], want: bool) -> None:
    assert match_reply(pattern, reply) is want


def test_split_replies_checks_framing() -> None:
    assert split_replies(b"250-a\r\n250 b\r\n221 c\r\n") == [["250-a", "250 b"], ["221 c"]]
    for bad in (b"250-a\r\n", b"250-a\r\n251 b\r\n", b"hello\r\n", b"250 a"):
        with pytest.raises(AssertionError):
            split_replies(bad)


@pytest.mark.parametrize(
    "text",
    ["S: 220 *\nX: what\n", "# max_lines: 3\nS: 220 *\n", "# mode: uucp\nS: 220 *\n", "D: x\n"],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse("bad", text)


def test_parse_turns_and_settings() -> None:
    t = parse(
        "t",
        "# A comment: not a setting\n# mode: lmtp\n# max_message_size: 100\n"
        "S: 220 *\nC: LHLO x\nR: NOOP\\r\\n\nS: 250 *\nS: 250 2.0.0 Ok\n"
        "E: MessageComplete\nD: a\\r\\n\nD: b\n",
    )
    assert t.settings.mode is Mode.LMTP and t.settings.max_message_size == 100
    assert t.turns == [(b"", ["220 *"]), (b"LHLO x\r\nNOOP\r\n", ["250 *", "250 2.0.0 Ok"])]
    assert [(e.event, e.data) for e in t.expected] == [("MessageComplete", b"a\r\nb")]


@pytest.mark.parametrize(
    "wrong",
    [
        "S: 220 *\nC: RCPT TO:<a@local.test>\nS: 250 *\n",  # the reply is 503
        "S: 220 *\nC: NOOP\n",  # a reply nobody expected
        "S: 220 *\nC: EHLO x\nS: 250 *\nC: MAIL FROM:<>\nS: 250 *\nC: RCPT TO:<bob@local.test>\n"
        "S: 250 *\nC: DATA\nS: 354 *\nC: x\nC: .\nS: 250 *\n",  # E: MessageComplete missing
        "S: 220 *\nC: EHLO x\nS: 250 *\nC: MAIL FROM:<>\nS: 250 *\nC: RCPT TO:<bob@local.test>\n"
        "S: 250 *\nC: DATA\nS: 354 *\nC: x\nC: .\nS: 250 *\nE: MessageComplete\nD: y\\r\\n\n",
        "S: 220 *\nC: NOOP\nS: 250 *\nS: 250 *\nC: NOOP\n",  # fine at once, not turn by turn
    ],
)
def test_a_wrong_transcript_fails(wrong: str) -> None:
    t = parse("wrong", wrong)
    with pytest.raises(AssertionError):
        check(t, "one", [t.client_bytes])
        check_turns(t)
