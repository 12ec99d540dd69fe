"""Property tests of the protocol core (Hypothesis).

(a) Any bytes, cut any way, after the greeting: the core hands out events and never
    raises anything but its own RemoteProtocolError (h11 ``fuzz/afl-server.py``); and the
    cut changes nothing observable.
(b) For every (State, verb) pair the result is the TRANSITIONS entry or a 503 with the
    state unchanged (h2 ``test_state_machines.py``); a refusal by the application leaves
    the state unchanged too.
(c) Every reply after the greeting, except the HELO/EHLO/LHLO answer, 354 and 334, carries an
    RFC 3463 enhanced status code of the same class as the reply code.
(d) Message text survives the trip: dot-stuffed DATA and BDAT chunks, cut anywhere.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kittiwake.protocol import (
    Auth,
    AuthResponse,
    CoreSettings,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    Mode,
    Quit,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLS,
    State,
    Unknown,
    replies,
)
from kittiwake.protocol._state import TRANSITIONS

from .transcripts import HANDSHAKE, HOSTNAME, Session, run, split_replies

# KITTIWAKE_EXAMPLES=20000 for a long hunt; the default keeps tests/protocol near 10 s.
EXAMPLES = int(os.environ.get("KITTIWAKE_EXAMPLES", "1000"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- inputs ---------------------------------------------------------------------------

TOKENS = [
    b"EHLO client.test\r\n",
    b"HELO client.test\r\n",
    b"LHLO client.test\r\n",
    b"MAIL FROM:<alice@local.test>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@remote.test> SIZE=5 BODY=8BITMIME AUTH=<>\r\n",
    b"MAIL FROM:<j\xc3\xb6rg@local.test> SMTPUTF8\r\n",
    b"MAIL FROM:<a@remote.test> FOO=bar\r\n",
    b"MAIL FROM:<a@remote.test> SIZE=\xc2\xb2\r\n",
    b"BDAT \xd9\xa1 LAST\r\n",
    b"RCPT TO:<bob@local.test>\r\n",
    b"RCPT TO:<carol@local.test>\r\n",
    b"RCPT TO:<x@remote.test>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<j\xc3\xb6rg@local.test>\r\n",
    b"DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5 LAST\r\n",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY bob\r\n",
    b"EXPN staff\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN YWxpY2U=\r\n",
    b"AUTH X-UNKNOWN\r\n",
    b"*\r\n",
    b"c2VjcmV0\r\n",
    b".\r\n",
    b"..\r\n",
    b"text line\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"\x00",
    b"\xff",
    b"x" * 40,
]
streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), max_size=30).map(
    b"".join
)
core_settings = st.builds(
    CoreSettings,
    hostname=st.just(HOSTNAME),
    mode=st.sampled_from(Mode),
    max_line_length=st.sampled_from([24, 64, 8192]),
    max_message_size=st.sampled_from([0, 8, 64]),
    max_recipients=st.sampled_from([1, 2, 100]),
    helo_required=st.booleans(),
    starttls=st.booleans(),
    auth=st.booleans(),
)


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


# ---- (a) any bytes, any cut -----------------------------------------------------------


@FAST
@given(core_settings, streams, st.data())
def test_any_bytes_any_chunking(cfg: CoreSettings, stream: bytes, data: st.DataObject) -> None:
    whole = run(cfg, [stream])  # anything but RemoteProtocolError would propagate
    pieces = cut(stream, data.draw(cuts_for(stream)))
    split = run(cfg, pieces)
    assert split.same() == whole.same()
    bytewise = run(cfg, [stream[i : i + 1] for i in range(len(stream))])
    assert bytewise.same() == whole.same()
    assert whole.closed


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(core_settings, streams, st.data())
def test_any_bytes_with_a_handshake(cfg: CoreSettings, stream: bytes, data: st.DataObject) -> None:
    """A handshake anywhere (ignored unless STARTTLS was accepted): still no crash."""
    at = data.draw(st.integers(0, len(stream)))
    whole = run(cfg, [stream[:at], HANDSHAKE, stream[at:]])
    bytewise = [stream[:at], HANDSHAKE, *(stream[i : i + 1] for i in range(at, len(stream)))]
    assert run(cfg, bytewise).same() == whole.same()


@FAST
@given(core_settings, st.binary(max_size=200))
def test_pure_noise(cfg: CoreSettings, stream: bytes) -> None:
    for prefix in (b"", b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n"):
        run(cfg, [prefix + stream])


# ---- (c) enhanced status codes --------------------------------------------------------

STATUS_LINE = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


def check_status_codes(output: bytes) -> None:
    """Every reply after the greeting but the hello answer and 354 has a status code."""
    for reply in split_replies(output)[1:]:
        first = reply[0]
        if first[4:] == HOSTNAME or first.startswith(("354 ", "334 ")):
            continue  # 334's text is the base64 challenge itself (RFC 4954 4)
        for line in reply:
            assert STATUS_LINE.match(line), line
            assert line[0] == line[4], f"class of {line!r}"


@FAST
@given(core_settings, streams)
def test_status_codes(cfg: CoreSettings, stream: bytes) -> None:
    check_status_codes(run(cfg, [stream]).output)


# ---- (d) message text round trip ------------------------------------------------------

text_lines = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b".", b"..", b"...", b".x", b"", b" .", b"\x00."]),
    ),
    max_size=20,
)
OPEN = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@local.test>\r\n"


def stuff(lines: Sequence[bytes]) -> bytes:
    """Reference dot-stuffer (RFC 5321 4.5.2), independent of the core."""
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines)


@FAST
@given(text_lines, st.data())
def test_dot_stuffed_round_trip(lines: list[bytes], data: st.DataObject) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    stream = OPEN + b"DATA\r\n" + stuff(lines) + b".\r\nQUIT\r\n"
    outcome = run(CoreSettings(HOSTNAME), cut(stream, data.draw(cuts_for(stream))))
    [got] = outcome.messages
    assert got.data == message
    assert split_replies(outcome.output)[-1] == ["221 2.0.0 Bye"]


@FAST
@given(text_lines, st.binary(max_size=5).map(lambda b: b.replace(b"\r", b"")), st.data())
def test_bdat_round_trip(lines: list[bytes], tail: bytes, data: st.DataObject) -> None:
    message = b"".join(line + b"\r\n" for line in lines) + tail.replace(b"\n", b"")
    sizes = cut(message, data.draw(cuts_for(message)))
    stream = OPEN + b"".join(b"BDAT %d\r\n" % len(c) + c for c in sizes) + b"BDAT 0 LAST\r\n"
    stream += b"QUIT\r\n"
    outcome = run(CoreSettings(HOSTNAME), cut(stream, data.draw(cuts_for(stream))))
    [got] = outcome.messages
    assert got.data == message


# ---- (b) the state machine ------------------------------------------------------------

HELLO = {Mode.SMTP: ("HELO", "EHLO"), Mode.LMTP: ("LHLO",)}
COMMAND = {
    "HELO": b"HELO client.test\r\n",
    "EHLO": b"EHLO client.test\r\n",
    "LHLO": b"LHLO client.test\r\n",
    "MAIL": b"MAIL FROM:<a@remote.test>\r\n",
    "RCPT": b"RCPT TO:<bob@local.test>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 2\r\nab",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",  # alice/secret: 235 at once
}
SEQUENCED = list(COMMAND)


def reach(state: State, mode: Mode, *, helo_required: bool = True) -> Session:
    """A session in ``state`` (the fake app accepting everything on the way)."""
    s = Session(mode=mode, helo_required=helo_required, starttls=True, auth=True)
    hello = COMMAND[HELLO[mode][-1]]
    path = {
        State.CONNECTED: b"",
        State.GREETED: hello,
        State.MAIL: hello + COMMAND["MAIL"],
        State.RCPT: hello + COMMAND["MAIL"] + COMMAND["RCPT"],
        State.DATA: hello + COMMAND["MAIL"] + COMMAND["RCPT"] + COMMAND["DATA"],
        State.CHUNKING: hello + COMMAND["MAIL"] + COMMAND["RCPT"] + COMMAND["BDAT"],
        State.TLS_HANDSHAKE: hello + COMMAND["STARTTLS"],
        State.AUTH: hello + b"AUTH PLAIN\r\n",  # 334: waiting for the response
        State.CLOSED: b"QUIT\r\n",
    }[state]
    if path:
        s.feed(path)
    assert s.conn.state is state
    return s


PAIRS = [
    (mode, state, verb)
    for mode in Mode
    for state in State
    for verb in SEQUENCED
    if verb not in ("HELO", "EHLO", "LHLO") or verb in HELLO[mode]
    # LMTP has no AUTH (RFC 2033): the verb is unknown there
    if mode is Mode.SMTP or (verb != "AUTH" and state is not State.AUTH)
]


@pytest.mark.parametrize(
    "mode, state, verb", PAIRS, ids=[f"{m.name}-{s.name}-{v}" for m, s, v in PAIRS]
)
def test_every_state_and_verb(mode: Mode, state: State, verb: str) -> None:
    s = reach(state, mode)
    before = list(s.app.events)
    got = s.feed(COMMAND[verb])
    new_events = s.app.events[len(before) :]
    if state is State.DATA:  # the line is message text, not a command
        assert got == [] and s.conn.state is State.DATA and new_events == []
        return
    if state is State.CLOSED:
        assert got == [] and s.conn.state is State.CLOSED
        return
    if state is State.TLS_HANDSHAKE:  # clear text before the handshake: never executed
        assert got == [[str(replies.STARTTLS_INJECTION)]] and s.conn.closed
        assert new_events == ["ConnectionClosed"]
        return
    if state is State.AUTH:  # the line is a SASL response, not a command
        assert new_events[0] == "AuthResponse", new_events
        assert not got[0][0].startswith("334") and s.conn.state is State.GREETED, got
        assert not s.conn.authenticated
        return
    target = TRANSITIONS.get((state, verb))
    if target is None:
        assert len(got) == 1 and got[0][0].startswith("503 5.5.1 "), got
        assert s.conn.state is state
        assert new_events == []
    else:
        assert s.conn.state is target, got
        assert all(r[0][0] in "23" for r in got), got


@pytest.mark.parametrize("state", [State.CONNECTED, State.GREETED, State.MAIL, State.RCPT])
@pytest.mark.parametrize("mode", list(Mode))
def test_hello_of_the_other_mode(mode: Mode, state: State) -> None:
    """HELO/EHLO in LMTP (500, RFC 2033 4.1), LHLO in SMTP (unknown: the app's 500)."""
    for verb in {Mode.SMTP: ("LHLO",), Mode.LMTP: ("HELO", "EHLO")}[mode]:
        s = reach(state, mode)
        [reply] = s.feed(COMMAND[verb])
        assert reply[0].startswith("500 5.5.1 ")
        assert s.conn.state is state


def test_mail_before_helo_when_not_required() -> None:
    s = reach(State.CONNECTED, Mode.SMTP, helo_required=False)
    s.feed(COMMAND["MAIL"])
    assert s.conn.state is TRANSITIONS[(State.CONNECTED, "MAIL!")] is State.MAIL


# The random walk: the application accepts or refuses each decision at random.

STEPS = [*SEQUENCED, "BDAT LAST", "RSET", "NOOP", "TEXT", "HANDSHAKE"]
STEP_BYTES = {**COMMAND, "BDAT LAST": b"BDAT 0 LAST\r\n", "RSET": b"RSET\r\n", "NOOP": b"NOOP\r\n"}
STEP_BYTES["TEXT"] = b"some text\r\n.\r\n"


def positive(conn: ServerConnection, event: Event) -> Reply | list[Reply]:
    if isinstance(event, Hello):
        return Reply(250, "", HOSTNAME)
    if isinstance(event, DataRequested):
        return replies.START_DATA
    if isinstance(event, MessageComplete) and conn.settings.mode is Mode.LMTP:
        return [replies.OK] * conn.recipients_accepted
    if isinstance(event, Quit):
        return replies.BYE
    if isinstance(event, StartTLS):
        return replies.READY_TLS
    if isinstance(event, Auth | AuthResponse):
        return replies.AUTH_OK
    assert isinstance(event, MailFrom | RcptTo | MessageComplete | Unknown), event
    return replies.OK


def negative(conn: ServerConnection, event: Event) -> Reply | list[Reply]:
    refusal = Reply(451, "4.3.0", "Not now")
    if isinstance(event, MessageComplete) and conn.settings.mode is Mode.LMTP:
        return [refusal] * conn.recipients_accepted
    return refusal


def expected_state(
    before: State, step: str, accept: bool, helo_required: bool, tls: bool, authed: bool = False
) -> State:
    """The model: the table, a positive reply moves, anything else stays."""
    if before is State.CLOSED:
        return before
    if step == "HANDSHAKE":
        return State.CONNECTED if before is State.TLS_HANDSHAKE else before
    if before is State.TLS_HANDSHAKE:  # any octet before the handshake closes
        return State.CLOSED
    if step == "STARTTLS" and tls:
        return before  # 503 TLS already active, whatever the state
    if step == "STARTTLS" and authed and before is State.GREETED:
        return before  # 503: no TLS under an authenticated session (RFC 3207 4.2)
    if before is State.DATA:  # every step is message text; only TEXT holds CRLF.CRLF
        return State.GREETED if step == "TEXT" else State.DATA
    if step in ("NOOP", "TEXT"):  # TEXT outside DATA: unknown verbs, nothing moves
        return before
    if step == "RSET":
        return before if before is State.CONNECTED else State.GREETED
    verb = "BDAT" if step == "BDAT LAST" else step
    target = TRANSITIONS.get((before, verb))
    if target is None and verb == "MAIL" and not helo_required:
        target = TRANSITIONS.get((before, "MAIL!"))
    if target is None:
        return before
    first_bdat = verb == "BDAT" and before is not State.CHUNKING
    if not accept and (verb != "BDAT" or first_bdat):
        return before
    if step == "BDAT LAST":
        return State.GREETED  # the message ends, whatever the app answers to it
    return target


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(
    st.sampled_from(Mode),
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(STEPS), st.booleans()), max_size=25),
)
def test_random_walk_follows_the_table(
    mode: Mode, helo_required: bool, steps: list[tuple[str, bool]]
) -> None:
    settings_ = CoreSettings(
        HOSTNAME, mode=mode, helo_required=helo_required, starttls=True, auth=True
    )
    conn = ServerConnection(settings_)
    conn.greeting()
    for step, accept in steps:
        if step in ("HELO", "EHLO", "LHLO") and step not in HELLO[mode]:
            continue
        if step == "AUTH" and mode is Mode.LMTP:
            continue
        before, tls, authed = conn.state, conn.tls, conn.authenticated
        if step == "HANDSHAKE":
            if before is State.TLS_HANDSHAKE:
                conn.tls_started()
                assert conn.tls
            assert conn.state is expected_state(before, step, accept, helo_required, tls)
            continue
        conn.receive_data(STEP_BYTES[step])
        decisions = 0
        for event in conn.events():
            if event.needs_reply:
                decisions += 1
                answer: Callable[[ServerConnection, Event], Reply | list[Reply]]
                # The command's own decision follows ``accept``; MessageComplete too.
                answer = positive if accept else negative
                conn.send(answer(conn, event))
        replies_out = split_replies(conn.data_to_send())
        want = expected_state(before, step, accept, helo_required, tls, authed)
        assert conn.state is want, (before, step, accept, replies_out)
        if before is State.CLOSED:
            assert replies_out == [] and decisions == 0
            continue
        if before is State.TLS_HANDSHAKE:
            assert replies_out == [[str(replies.STARTTLS_INJECTION)]], replies_out
            continue
        if step == "STARTTLS" and tls:
            assert replies_out == [[str(replies.TLS_ALREADY_ACTIVE)]] and decisions == 0
            continue
        if step in [*SEQUENCED, "BDAT LAST"] and before is not State.DATA:
            verb = "BDAT" if step == "BDAT LAST" else step
            in_table = (before, verb) in TRANSITIONS or (
                verb == "MAIL" and not helo_required and (before, "MAIL!") in TRANSITIONS
            )
            if not in_table:
                assert replies_out and replies_out[0][0].startswith("503 5.5.1 "), replies_out
                assert decisions == 0
