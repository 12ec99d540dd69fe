"""Transcript runner for the protocol core (STYLE.md section 7).

A transcript is a text file of lines, each starting with a two-letter tag:

``S: text``
    One line of a server reply. Consecutive ``S:`` lines whose code is followed by
    ``-`` belong to the same multi-line reply, as on the wire. ``*`` matches any text,
    line breaks included, so ``S: 250 *`` matches a whole EHLO answer.
``C: text``
    One line the client sends; CRLF is appended. ``C:`` alone is an empty line.
``R: text``
    Raw octets the client sends, with Python escapes (``\\r``, ``\\n``, ``\\x00``) and
    nothing appended: bare CR/LF, partial lines, binary BDAT payloads.
``E: MessageComplete`` / ``E: MessageAborted``
    The message-level events the application sees, in order. Every transcript lists
    all of them (none listed means none may happen).
``D: text``
    The message text of the preceding ``E: MessageComplete``, with Python escapes;
    consecutive ``D:`` lines are concatenated. Omitted: the text is not checked.
``T: handshake``
    The adapter's TLS handshake after STARTTLS: ``tls_started()`` is called here (if
    the core is still waiting for it). Every chunking cuts the octets on either side
    separately, as a real handshake separates them.

A header of ``# key: value`` lines at the top sets ``CoreSettings`` fields (``mode``,
``max_line_length``, ``max_message_size``, ``max_recipients``, ``helo_required``,
``brackets_required``, ``starttls``, ``auth``); other ``#`` lines are comments. The connection
always ends with EOF after the last client octets.

Every transcript runs through the core several ways (``chunkings``): as one chunk, one
byte at a time, in seeded random chunks, and turn by turn (the client octets up to each
``S:`` block, checking that exactly that block comes back, as a real client would see).
"""

from __future__ import annotations

import codecs
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kittiwake.auth.sasl import (
    Challenge,
    Credentials,
    Mechanism,
    challenge_reply,
    new_mechanism,
)
from kittiwake.protocol import (
    CONNECTION_CLOSED,
    Auth,
    AuthResponse,
    CoreSettings,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    Mode,
    Quit,
    RcptTo,
    RemoteProtocolError,
    Reply,
    Reset,
    ServerConnection,
    StartTLS,
    State,
    Unknown,
    replies,
)

__all__ = [
    "HANDSHAKE",
    "HOSTNAME",
    "TRANSCRIPT_DIR",
    "FakeApp",
    "Message",
    "Outcome",
    "Session",
    "Transcript",
    "check",
    "chunkings",
    "load",
    "match_reply",
    "parse",
    "run",
    "split_replies",
]

TRANSCRIPT_DIR = Path(__file__).parent / "transcripts"
HOSTNAME = "mx.test"


class _Handshake:
    """In a list of chunks: the TLS handshake after STARTTLS happens here."""

    def __repr__(self) -> str:
        return "HANDSHAKE"


HANDSHAKE: Any = _Handshake()

# ---- the fake application -------------------------------------------------------------

LOCAL_DOMAINS = frozenset({"local.test"})
USERS = frozenset({"alice", "bob", "carol", "dave", "jörg", '"john smith"', '"a@b"'})
FULL_MAILBOXES = frozenset({"carol"})  # LMTP: delivery fails 452 4.2.2 for these
PASSWORDS = {"alice": "secret"}  # AUTH PLAIN/LOGIN; a third failure gets 421


def _escapes(text: str) -> bytes:
    """Python escapes in ``text`` to octets (non-ASCII characters stay UTF-8)."""
    return codecs.escape_decode(text.encode("utf-8"))[0]


@dataclass(frozen=True)
class Message:
    """A message the fake application was handed at ``MessageComplete``."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    delivered_to: tuple[str, ...]  # recipients that got a 2xx (all of them in SMTP)


class FakeApp:
    """Answers every decision the core hands out, like a tiny mail service.

    Users are a fixed set in ``local.test``; everything else is refused 550 5.1.1.
    Replies echo what the core parsed (address, parameters, size) so that transcripts
    can check the parsing. The app also cross-checks the core: message text only
    between an accepted DATA/BDAT and the end, ``MessageComplete.size`` equal to the
    octets handed over.
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.messages: list[Message] = []
        self.events: list[str] = []  # event class names, MessageData left out
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._data: bytearray | None = None
        self._mechanism: Mechanism | None = None
        self.auth_failures = 0

    def _reset(self) -> None:
        self._sender = None
        self._recipients = []
        self._data = None

    @staticmethod
    def known(address: str) -> bool:
        local, at, domain = address.rpartition("@")
        if not at:
            return address.lower() == "postmaster"  # RFC 5321 4.1.1.3
        return domain.lower() in LOCAL_DOMAINS and local.lower() in USERS

    def handle(self, conn: ServerConnection, event: Event) -> None:
        """Observe ``event`` and, when it is a decision, answer it on ``conn``."""
        if not isinstance(event, MessageData):
            self.events.append(type(event).__name__)
        if isinstance(event, MessageData):
            assert self._data is not None, "message text outside DATA/BDAT"
            assert event.data, "empty MessageData"
            self._data += event.data
        elif isinstance(event, Hello):
            self._reset()
            conn.send(Reply(250, "", HOSTNAME))
        elif isinstance(event, MailFrom):
            self._reset()
            self._sender = event.address
            conn.send(replies.SENDER_OK.with_text(f"<{event.address}> {_describe(event)}"))
        elif isinstance(event, RcptTo):
            if not self.known(event.address):
                conn.send(replies.NO_SUCH_USER.with_text(f"<{event.address}> No such user"))
                return
            self._recipients.append(event.address)
            conn.send(replies.RECIPIENT_OK.with_text(f"<{event.address}> Recipient ok"))
        elif isinstance(event, DataRequested):
            assert self._recipients, "DATA/BDAT with no accepted recipient"
            self._data = bytearray()
            conn.send(replies.START_DATA)
        elif isinstance(event, MessageComplete):
            assert self._data is not None, "MessageComplete without DATA/BDAT"
            assert event.size == len(self._data), (event.size, len(self._data))
            self._complete(conn, event)
        elif isinstance(event, MessageAborted | Reset):
            self._reset()
        elif isinstance(event, Quit):
            conn.send(replies.BYE)
        elif isinstance(event, StartTLS):
            self._reset()
            conn.send(replies.READY_TLS)
        elif isinstance(event, Unknown):
            conn.send(replies.UNRECOGNIZED)
        elif isinstance(event, Auth):
            self._mechanism = new_mechanism(event.mechanism)
            if self._mechanism is None:
                conn.send(replies.AUTH_UNKNOWN_MECHANISM)
                return
            self._sasl(conn, self._mechanism.start(event.initial_response))
        elif isinstance(event, AuthResponse):
            assert self._mechanism is not None, "AuthResponse outside an exchange"
            self._sasl(conn, self._mechanism.respond(event.line))

    def _sasl(self, conn: ServerConnection, step: object) -> None:
        if isinstance(step, Challenge):
            conn.send(challenge_reply(step))
            return
        self._mechanism = None
        if not isinstance(step, Credentials):
            conn.send(step.reply)  # type: ignore[attr-defined]
        elif PASSWORDS.get(step.authcid) == step.password and step.authzid in ("", step.authcid):
            conn.send(replies.AUTH_OK)
        else:
            self.auth_failures += 1
            failed = self.auth_failures >= 3
            conn.send(replies.AUTH_TOO_MANY_FAILURES if failed else replies.AUTH_FAILED)

    def _complete(self, conn: ServerConnection, event: MessageComplete) -> None:
        assert self._sender is not None and self._data is not None
        data = bytes(self._data)
        rcpts = tuple(self._recipients)
        if self.mode is Mode.SMTP:
            conn.send(Reply(250, "2.0.0", f"Ok: {event.size} octets queued"))
            delivered = rcpts
        else:
            answers = []
            for rcpt in rcpts:
                if rcpt.partition("@")[0].lower() in FULL_MAILBOXES:
                    answers.append(Reply(452, "4.2.2", f"<{rcpt}> Mailbox full"))
                else:
                    answers.append(Reply(250, "2.0.0", f"<{rcpt}> Delivered"))
            conn.send(answers)
            delivered = tuple(r for r, a in zip(rcpts, answers, strict=True) if a.positive)
        self.messages.append(Message(self._sender, rcpts, data, delivered))
        self._reset()


def _describe(event: MailFrom) -> str:
    parts = ["Sender ok"]
    if event.size is not None:
        parts.append(f"size={event.size}")
    if event.body is not None:
        parts.append(f"body={event.body}")
    if event.smtputf8:
        parts.append("smtputf8")
    if event.auth is not None:
        parts.append(f"auth={event.auth}")
    return " ".join(parts)


# ---- driving the core -----------------------------------------------------------------


@dataclass
class Outcome:
    """Everything observable from one run: what a chunking must not change."""

    output: bytes  # the greeting and every reply, as sent
    messages: list[Message]
    events: list[str]
    closed: bool
    raised: str | None = None  # a RemoteProtocolError escaping the core (allowed)
    turn_outputs: list[bytes] = field(default_factory=list)  # per fed chunk

    def same(self) -> tuple[bytes, list[Message], list[str], bool, str | None]:
        return (self.output, self.messages, self.events, self.closed, self.raised)


def run(settings: CoreSettings, chunks: Iterable[bytes], *, eof: bool = True) -> Outcome:
    """Greet, feed ``chunks`` (then EOF), let the fake app answer; collect the outcome."""
    conn = ServerConnection(settings)
    app = FakeApp(settings.mode)
    out = bytearray(conn.greeting())
    turns: list[bytes] = []
    raised: str | None = None
    seen_close = False

    def drain() -> None:
        nonlocal seen_close
        if seen_close:
            return
        for event in conn.events():
            app.handle(conn, event)
            if event is CONNECTION_CLOSED:
                seen_close = True

    feed = [c for c in chunks if c]  # b"" would mean EOF
    if eof:
        feed.append(b"")
    try:
        for chunk in feed:
            if chunk is HANDSHAKE:
                if conn.state is State.TLS_HANDSHAKE:
                    conn.tls_started()
            else:
                conn.receive_data(chunk)
            drain()
            sent = conn.data_to_send()
            out += sent
            turns.append(sent)
    except RemoteProtocolError as err:
        raised = repr(err)
    return Outcome(bytes(out), app.messages, app.events, conn.closed, raised, turns)


class Session:
    """A connection and the fake app, fed step by step (for unit and property tests)."""

    def __init__(self, settings: CoreSettings | None = None, **kw: Any) -> None:
        self.conn = ServerConnection(settings or CoreSettings(HOSTNAME, **kw))
        self.app = FakeApp(self.conn.settings.mode)
        self.greeting = self.conn.greeting()

    def feed(self, data: bytes) -> list[list[str]]:
        """Send ``data`` (``b""`` is EOF); the replies it brought, as split_replies."""
        self.conn.receive_data(data)
        if not (self.conn.closed and "ConnectionClosed" in self.app.events):
            for event in self.conn.events():
                self.app.handle(self.conn, event)
        return split_replies(self.conn.data_to_send())

    def lines(self, *lines: str) -> list[list[str]]:
        return self.feed(b"".join(line.encode() + b"\r\n" for line in lines))


def chunkings(data: bytes, seed: int) -> Iterator[tuple[str, list[bytes]]]:
    """The ways a byte stream is cut: whole, byte by byte, and three random cuttings."""
    yield "one", [data]
    yield "bytes", [data[i : i + 1] for i in range(len(data))]
    for n in range(3):
        rnd = random.Random(seed * 7 + n)
        top = rnd.choice((3, 17, 200))
        pieces, i = [], 0
        while i < len(data):
            size = rnd.randint(1, top)
            pieces.append(data[i : i + size])
            i += size
        yield f"random{n}", pieces


# ---- transcripts ----------------------------------------------------------------------

_SETTINGS: dict[str, Callable[[str], Any]] = {
    "mode": lambda v: Mode[v.upper()],
    "max_line_length": int,
    "max_message_size": int,
    "max_recipients": int,
    "helo_required": lambda v: {"true": True, "false": False}[v.lower()],
    "brackets_required": lambda v: {"true": True, "false": False}[v.lower()],
    "starttls": lambda v: {"true": True, "false": False}[v.lower()],
    "auth": lambda v: {"true": True, "false": False}[v.lower()],
}
_HEADER = re.compile(r"# ([a-z_]+): (.*)")
_TAGS = ("S:", "C:", "R:", "E:", "D:", "T:")


@dataclass
class Expected:
    """One expected message-level event; ``data`` is None when not checked."""

    event: str
    data: bytes | None = None


@dataclass
class Transcript:
    name: str
    settings: CoreSettings
    # turns: (client octets, expected reply lines); the first turn is the greeting
    turns: list[tuple[bytes, list[str]]]
    expected: list[Expected]

    @property
    def client_bytes(self) -> bytes:
        return b"".join(c for c, _ in self.turns if c is not HANDSHAKE)

    @property
    def segments(self) -> list[bytes]:
        """The client's octets cut at each handshake (one segment when there is none)."""
        out = [b""]
        for client, _ in self.turns:
            if client is HANDSHAKE:
                out.append(b"")
            else:
                out[-1] += client
        return out

    def chunkings(self) -> Iterator[tuple[str, list[bytes]]]:
        """:func:`chunkings` of each segment, joined by ``HANDSHAKE``."""
        ways = [list(chunkings(seg, self.seed + i)) for i, seg in enumerate(self.segments)]
        for cut_ways in zip(*ways, strict=True):
            chunks: list[bytes] = []
            for i, (_, pieces) in enumerate(cut_ways):
                if i:
                    chunks.append(HANDSHAKE)
                chunks.extend(pieces)
            yield cut_ways[0][0], chunks

    @property
    def reply_lines(self) -> list[str]:
        return [line for _, lines in self.turns for line in lines]

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def parse(name: str, text: str) -> Transcript:
    """Parse a transcript.

    Raises:
        ValueError: an unknown tag, header key or setting value, with the line number.
    """
    settings = CoreSettings(HOSTNAME)
    turns: list[tuple[bytes, list[str]]] = [(b"", [])]
    expected: list[Expected] = []
    in_header = True
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        if raw.startswith("#") or not raw.strip():
            header = _HEADER.fullmatch(raw)
            if in_header and header:
                key, value = header.groups()
                if key not in _SETTINGS:
                    raise ValueError(f"{where}: unknown setting {key!r}")
                settings = replace(settings, **{key: _SETTINGS[key](value.strip())})
            continue
        in_header = False
        tag, body = raw[:2], raw[3:] if raw[2:3] == " " else raw[2:]
        if tag not in _TAGS:
            raise ValueError(f"{where}: unknown line {raw!r}")
        client, lines = turns[-1]
        if tag == "S:":
            lines.append(body)
        elif tag == "T:":
            if body != "handshake":
                raise ValueError(f"{where}: T: takes handshake")
            turns.append((HANDSHAKE, []))
        elif tag in ("C:", "R:"):
            octets = body.encode("utf-8") + b"\r\n" if tag == "C:" else _escapes(body)
            if lines or len(turns) == 1 or client is HANDSHAKE:
                turns.append((octets, []))
            else:
                turns[-1] = (client + octets, lines)
        elif tag == "E:":
            if body not in ("MessageComplete", "MessageAborted"):
                raise ValueError(f"{where}: E: takes MessageComplete or MessageAborted")
            expected.append(Expected(body))
        else:  # D:
            if not expected or expected[-1].event != "MessageComplete":
                raise ValueError(f"{where}: D: must follow E: MessageComplete")
            last = expected[-1]
            last.data = (last.data or b"") + _escapes(body)
    return Transcript(name, settings, turns, expected)


def load(path: Path) -> Transcript:
    return parse(path.stem, path.read_text(encoding="utf-8"))


def split_replies(output: bytes) -> list[list[str]]:
    """Cut server output into replies (lists of lines), checking the framing.

    Raises:
        AssertionError: a line that is not ``ddd`` + space/hyphen, a code that changes
            inside a multi-line reply, or a reply left unfinished.
    """
    assert output == b"" or output.endswith(b"\r\n"), f"output not CRLF-terminated: {output!r}"
    result: list[list[str]] = []
    current: list[str] = []
    for raw in output.split(b"\r\n")[:-1]:
        line = raw.decode("utf-8")
        assert re.match(r"\d{3}[ -]", line), f"malformed reply line {line!r}"
        assert not current or current[0][:3] == line[:3], f"code changes in {[*current, line]}"
        current.append(line)
        if line[3] == " ":
            result.append(current)
            current = []
    assert not current, f"unfinished reply {current}"
    return result


def _group(lines: Sequence[str]) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        if line[3:4] != "-":
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _normal(lines: Sequence[str]) -> str:
    # The continuation mark is checked by split_replies; here "250 *" may match a
    # multi-line reply, so compare with every mark as a space.
    return "\n".join(line[:3] + " " + line[4:] if line[3:4] == "-" else line for line in lines)


def match_reply(pattern: Sequence[str], reply: Sequence[str]) -> bool:
    """Does an ``S:`` block (``*`` = anything, across lines) match one whole reply?"""
    regex = ".*".join(re.escape(part) for part in _normal(pattern).split("*"))
    return re.fullmatch(regex, _normal(reply), re.DOTALL) is not None


def _compare(expected_lines: Sequence[str], output: bytes, what: str) -> None:
    want = _group(expected_lines)
    got = split_replies(output)
    ok = len(want) == len(got) and all(match_reply(w, g) for w, g in zip(want, got, strict=True))
    if not ok:
        lines = [f"{what}: replies differ", "  expected:"]
        lines += [f"    {' | '.join(w)}" for w in want]
        lines += ["  got:"] + [f"    {' | '.join(g)}" for g in got]
        raise AssertionError("\n".join(lines))


def check(t: Transcript, way: str, chunks: Sequence[bytes]) -> Outcome:
    """Run ``t`` fed as ``chunks`` and assert replies and events match the file."""
    outcome = run(t.settings, chunks)
    assert outcome.raised is None, f"{t.name} [{way}]: {outcome.raised}"
    _compare(t.reply_lines, outcome.output, f"{t.name} [{way}]")
    assert outcome.closed, f"{t.name} [{way}]: connection still open after EOF"
    got_events = [e for e in outcome.events if e in ("MessageComplete", "MessageAborted")]
    assert got_events == [e.event for e in t.expected], f"{t.name} [{way}]: {got_events}"
    texts = iter(m.data for m in outcome.messages)
    for exp in t.expected:
        if exp.event == "MessageComplete":
            data = next(texts)
            if exp.data is not None:
                assert data == exp.data, f"{t.name} [{way}]: message text {data!r}"
    return outcome


def check_turns(t: Transcript) -> Outcome:
    """Feed ``t`` turn by turn: each turn must answer exactly its own ``S:`` block."""
    outcome = check(t, "turns", [c for c, _ in t.turns[1:]])
    greeting, _, _ = outcome.output.partition(b"\r\n")
    _compare(t.turns[0][1], greeting + b"\r\n", f"{t.name} [greeting]")
    # turn_outputs: one entry per turn after the greeting, then the EOF's
    for i, ((_, lines), sent) in enumerate(zip(t.turns[1:], outcome.turn_outputs, strict=False), 1):
        _compare(lines, sent, f"{t.name} [turn {i}]")
    assert outcome.turn_outputs[-1] == b"", f"{t.name}: replies after EOF"
    return outcome
