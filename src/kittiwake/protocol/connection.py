"""The SMTP/LMTP server side of one connection, sans I/O.

Bytes in (``receive_data``), events out (``next_event``); replies in (``send``),
bytes out (``data_to_send``). No sockets, no clock, no asyncio: the adapter in
``server/`` moves bytes and the application decides what needs deciding.

The core answers syntax, sequence (503), NOOP, RSET, HELP, VRFY and EXPN itself,
enforces the line, size and recipient limits, and reads message text. It hands the
application only what needs a decision (``Event.needs_reply``), one at a time: it
reads no further command until the decision is answered, so pipelined commands
(RFC 2920) get their replies in order and each sees the state its predecessor left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from . import _replies as R
from ._address import decode_xtext, parse_params, parse_path
from ._body import BareLineEnding, ChunkReader, DotReader
from ._errors import CommandRefused, LocalProtocolError, RemoteProtocolError
from ._events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Auth,
    AuthResponse,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    Quit,
    RcptTo,
    Reset,
    StartTLS,
    Unknown,
)
from ._replies import Reply
from ._state import State, next_state

__all__ = ["CoreSettings", "Mode", "ServerConnection"]

_MAX_SIZE_DIGITS = 20  # SIZE= and BDAT sizes: refuse absurd numbers before int()
#: RFC 4954 4: a server must take AUTH lines (command and responses) of at least 12288
#: octets, whatever its command line limit
SASL_LINE_MINIMUM = 12288
_SASL_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}")  # RFC 4422 3.1


def _is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" (int() fails) and "١٠"."""
    return text.isascii() and text.isdigit()


class Mode(Enum):
    SMTP = "SMTP"
    LMTP = "LMTP"


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """What the core needs to know about its listener."""

    hostname: str
    mode: Mode = Mode.SMTP
    greeting: str | None = None  # text after "220 "; None = "<hostname> ESMTP kittiwake"
    max_line_length: int = 8192  # command line octets, CRLF included
    max_message_size: int = 0  # message text octets; 0 = no limit
    max_recipients: int = 100
    helo_required: bool = True  # James heloEhloEnforcement
    brackets_required: bool = True  # James addressBracketsEnforcement
    disabled_keywords: frozenset[str] = frozenset()  # EHLO keywords not announced
    starttls: bool = False  # offer STARTTLS (James tls@startTLS), until TLS is active
    auth: bool = False  # the AUTH command exists (RFC 4954); the application decides the rest
    mail_parameters: frozenset[str] = frozenset()  # more MAIL parameters (upper case) to pass on


class _Reader(Enum):
    COMMAND = 0
    DISCARD_LINE = 1  # the rest of an over-long command line
    DATA = 2
    CHUNK = 3
    SKIP_CHUNK = 4  # a refused BDAT's octets


class ServerConnection:
    """One SMTP or LMTP session, server side.

    Args:
        settings: the listener's limits and names.
        tls: the connection is already encrypted (implicit TLS, RFC 8314).
    """

    def __init__(self, settings: CoreSettings, *, tls: bool = False) -> None:
        self.settings = settings
        self.state = State.CONNECTED
        #: the connection is encrypted (implicit TLS, or after STARTTLS's handshake)
        self.tls = tls
        #: set by the application once AUTH succeeded; STARTTLS is refused then
        self.authenticated = False
        #: EHLO keywords the application adds (AUTH ...), in order
        self.extra_keywords: list[str] = []
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._reader = _Reader.COMMAND
        self._pending: Event | None = None  # decision awaiting send()
        self._pending_verb = ""
        self._dot = DotReader()
        self._chunk = ChunkReader()
        self._bdat_size = 0
        self._bdat_last = False
        self._complete_next = False  # message text ended; MessageComplete comes next
        self._closing = False  # close once the current reply is out
        self._tx_smtputf8 = False
        self._tx_recipients = 0
        self._tx_rcpts: list[str] = []  # accepted, in order: LMTP names them in replies
        self._tx_size = 0
        self._tx_too_big = False
        # Octets a line may have, CRLF included: maxLineLength, and at least
        # SASL_LINE_MINIMUM where an AUTH line may come (the command itself is checked
        # against maxLineLength once its verb is known). Fixed: settings are frozen.
        limit = settings.max_line_length
        self._limit = max(limit, SASL_LINE_MINIMUM) if settings.auth else limit

    # ---- properties ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def recipients_accepted(self) -> int:
        """RCPTs accepted in the current transaction (LMTP replies one per each)."""
        return self._tx_recipients

    @property
    def smtputf8(self) -> bool:
        """The current transaction was opened with MAIL ... SMTPUTF8."""
        return self._tx_smtputf8

    def keywords(self) -> list[str]:
        """The EHLO/LHLO keywords announced now (RFC 5321 4.1.1.1)."""
        s = self.settings
        size = f"SIZE {s.max_message_size}" if s.max_message_size else "SIZE"
        base = ["PIPELINING", size, "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"]
        if s.starttls and not self.tls:
            base.append("STARTTLS")  # never after the handshake (RFC 3207 4.2)
        base += self.extra_keywords
        return [k for k in base if k.split(" ", 1)[0].upper() not in s.disabled_keywords]

    def _announced(self, keyword: str) -> bool:
        return keyword not in self.settings.disabled_keywords

    # ---- output -------------------------------------------------------------------

    def greeting(self) -> bytes:
        """The 220 greeting (RFC 5321 4.3.1; RFC 2033 4.1 for LMTP)."""
        s = self.settings
        text = s.greeting or f"{s.hostname} {'LMTP' if s.mode is Mode.LMTP else 'ESMTP'} kittiwake"
        return Reply(220, "", text).to_bytes()

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def timed_out(self) -> bytes:
        """The client was idle too long: 421 and close (RFC 5321 4.5.3.2)."""
        return self.close(R.TIMEOUT)

    def close(self, reply: Reply | None = None) -> bytes:
        """Close from the server side, with a last reply (e.g. 421 on shutdown).

        Returns:
            everything still to be written, the last reply included.
        """
        self._close(reply)
        return self.data_to_send()

    def _close(self, reply: Reply | None) -> None:
        if reply is not None and self.state is not State.CLOSED:
            self._out.append(reply.to_bytes())
        self.state = State.CLOSED

    # ---- input --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if self.state is State.CLOSED:
            return
        if data and self.state is State.TLS_HANDSHAKE:
            # Sent in clear text after STARTTLS's 220: never executed (CVE-2011-0411).
            self._close(R.STARTTLS_INJECTION)
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def events(self) -> Iterator[Event]:
        """Events until more data is needed; answer each decision before the next."""
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event
            if event is CONNECTION_CLOSED:
                return

    def next_event(self) -> Event:
        """The next event, ``NEED_DATA`` or ``CONNECTION_CLOSED``.

        Raises:
            LocalProtocolError: the previous decision has not been answered.
        """
        if self._pending is not None:
            raise LocalProtocolError(f"answer {self._pending!r} before reading on")
        while self.state is not State.CLOSED:  # not self.closed: a property call per loop
            in_message = self.state in (State.DATA, State.CHUNKING)  # also between chunks
            try:
                event = self._step()
            except RemoteProtocolError as err:
                self._close(err.reply)
                if in_message:
                    self._reader = _Reader.COMMAND
                    return MessageAborted(err.reply.text)
                return CONNECTION_CLOSED
            if event is not None:
                if event.needs_reply:
                    self._pending = event
                return event
        return CONNECTION_CLOSED

    def _step(self) -> Event | None:
        """Make progress on the buffer: an event, None to loop, NEED_DATA to stop."""
        if self._complete_next:
            self._complete_next = False
            return self._message_end()
        reader = self._reader
        if reader is _Reader.DATA:
            return self._read_dot_text()
        if reader is _Reader.CHUNK or reader is _Reader.SKIP_CHUNK:
            return self._read_chunk()
        line = self._next_line()
        if line is None:
            if self._eof:
                chunking = self.state is State.CHUNKING
                self.state = State.CLOSED
                if chunking:
                    return MessageAborted("connection closed during BDAT")
            return NEED_DATA if self.state is not State.CLOSED else None
        if reader is _Reader.DISCARD_LINE:
            self._reader = _Reader.COMMAND
            if self.state is State.AUTH:
                self.state = State.GREETED  # RFC 4954 4: 500 5.5.6 ends the exchange
                self._reply(R.AUTH_LINE_TOO_LONG)
            else:
                self._reply(R.LINE_TOO_LONG)  # now that the line ended cleanly
            return None
        if self.state is State.AUTH:
            if len(line) > self._limit:
                self.state = State.GREETED
                self._reply(R.AUTH_LINE_TOO_LONG)
                return None
            return AuthResponse(line[:-2].decode("latin-1"))
        if len(line) > self._limit or (
            len(line) > self.settings.max_line_length
            and not (self.settings.auth and line[:5].upper() == b"AUTH ")
        ):
            self._reply(R.LINE_TOO_LONG)  # RFC 5321 4.5.3.1.4; the session goes on
            return None
        try:
            return self._command(line)
        except CommandRefused as refused:
            self._reply(refused.reply)
            return None

    def _next_line(self) -> bytes | None:
        """One command line with its CRLF, or None until one is complete.

        Raises:
            RemoteProtocolError: a bare CR or LF (RFC 5321 2.3.8).
        """
        buf = self._buf
        lf = buf.find(b"\n")
        if lf < 0:
            # A CR not followed by LF is bare now, however the line was cut into reads.
            if buf.find(b"\r", 0, len(buf) - 1) >= 0:
                raise RemoteProtocolError(R.BARE_LINE_ENDING)
            limit = self._limit
            if len(buf) > limit:
                # Over-long line still coming: drop it up to its CRLF and answer then, as
                # when it arrives whole (a bare CR or LF in it closes either way).
                keep = 1 if buf.endswith(b"\r") else 0
                del buf[: len(buf) - keep]
                if self._reader is _Reader.COMMAND:
                    self._reader = _Reader.DISCARD_LINE
            return None
        if lf == 0 or buf[lf - 1] != 0x0D or buf.find(b"\r", 0, lf - 1) >= 0:
            raise RemoteProtocolError(R.BARE_LINE_ENDING)
        line = bytes(buf[: lf + 1])
        del buf[: lf + 1]
        return line

    # ---- commands -----------------------------------------------------------------

    def _command(self, raw: bytes) -> Event | None:
        try:
            line = raw[:-2].decode("utf-8")
        except UnicodeDecodeError:
            raise CommandRefused(R.BAD_ENCODING) from None
        if not line:
            raise CommandRefused(R.EMPTY_LINE)
        if not line.isprintable():
            raise CommandRefused(R.CONTROL_CHARACTERS)
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            return Unknown(verb, arg)
        return handler(self, verb, arg)

    def _sequence(self, verb: str) -> State:
        """The state a positive reply to ``verb`` leads to, or a 503.

        Raises:
            CommandRefused: 503 5.5.1 when out of sequence.
        """
        state = self.state
        target = next_state(state, verb)
        if target is None and verb == "MAIL" and not self.settings.helo_required:
            target = next_state(state, "MAIL!")
        if target is not None:
            return target
        lmtp = self.settings.mode is Mode.LMTP
        if state is State.CONNECTED:
            raise CommandRefused(R.NEED_LHLO if lmtp else R.NEED_HELO)
        if verb == "MAIL":
            raise CommandRefused(R.NESTED_MAIL)
        if verb == "RCPT":
            raise CommandRefused(R.NEED_MAIL)
        if verb == "DATA" and state is State.CHUNKING:
            raise CommandRefused(R.DATA_AFTER_BDAT)
        if verb in ("DATA", "BDAT"):
            raise CommandRefused(R.NEED_RCPT if state is State.MAIL else R.NEED_MAIL)
        if verb == "STARTTLS":
            raise CommandRefused(R.STARTTLS_IN_TRANSACTION)
        raise CommandRefused(R.BAD_SEQUENCE)

    def _hello(self, verb: str, arg: str) -> Event | None:
        lmtp = self.settings.mode is Mode.LMTP
        if lmtp != (verb == "LHLO"):
            if lmtp:
                raise CommandRefused(R.USE_LHLO)  # RFC 2033 4.1
            return Unknown(verb, arg)
        name = arg.strip(" ")
        if not name or " " in name or not name.isascii():
            raise CommandRefused(R.HELO_NEEDS_DOMAIN)
        self._pending_verb = verb
        return Hello(verb, name)

    def _mail(self, verb: str, arg: str) -> Event | None:
        self._sequence(verb)
        if arg[:5].upper() != "FROM:":
            raise CommandRefused(R.MAIL_SYNTAX)
        path, rest = parse_path(
            arg[5:],
            brackets_required=self.settings.brackets_required,
            allow_null=True,
            syntax_error=R.BAD_SENDER_SYNTAX,
        )
        if path is not None and not path.domain:
            raise CommandRefused(R.BAD_SENDER_SYNTAX)  # a bare <postmaster> is RCPT-only
        params = parse_params(rest)
        size: int | None = None
        body: str | None = None
        auth: str | None = None
        smtputf8 = False
        for key, value in params.items():
            if key == "SIZE" and self._announced("SIZE"):
                if value is None or not _is_digits(value) or len(value) > _MAX_SIZE_DIGITS:
                    raise CommandRefused(R.BAD_PARAMETER_VALUE)
                size = int(value)
            elif key == "BODY" and self._announced("8BITMIME"):
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise CommandRefused(R.BAD_PARAMETER_VALUE)
                body = value.upper()
            elif key == "SMTPUTF8" and self._announced("SMTPUTF8"):
                if value is not None:
                    raise CommandRefused(R.BAD_PARAMETER_VALUE)
                smtputf8 = True
            elif key == "AUTH":  # RFC 4954 5: accepted, even unauthenticated
                if value is None:
                    raise CommandRefused(R.BAD_PARAMETER_VALUE)
                auth = decode_xtext(value)
            elif key in self.settings.mail_parameters:
                pass  # a hook takes it (James's MailParametersHook); the application asks
            else:
                raise CommandRefused(R.UNKNOWN_PARAMETER)
        address = path.address if path is not None else ""
        if not smtputf8 and not address.isascii():
            raise CommandRefused(R.UTF8_NEEDS_SMTPUTF8)
        limit = self.settings.max_message_size
        if size is not None and limit and size > limit:
            raise CommandRefused(R.MESSAGE_TOO_BIG)  # RFC 1870 6.1
        self._pending_verb = verb
        return MailFrom(address, params, size=size, body=body, smtputf8=smtputf8, auth=auth)

    def _rcpt(self, verb: str, arg: str) -> Event | None:
        self._sequence(verb)
        if arg[:3].upper() != "TO:":
            raise CommandRefused(R.RCPT_SYNTAX)
        path, rest = parse_path(
            arg[3:],
            brackets_required=self.settings.brackets_required,
            allow_null=False,
            syntax_error=R.BAD_RECIPIENT_SYNTAX,
        )
        assert path is not None  # allow_null=False
        if parse_params(rest):
            raise CommandRefused(R.UNKNOWN_PARAMETER)  # no DSN (RFC 3461) yet
        if not self._tx_smtputf8 and not path.address.isascii():
            raise CommandRefused(R.UTF8_NEEDS_SMTPUTF8)
        if self._tx_recipients >= self.settings.max_recipients:
            raise CommandRefused(R.TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10: 452
        self._pending_verb = verb
        return RcptTo(path.address, {})

    def _data(self, verb: str, arg: str) -> Event | None:
        if arg:
            raise CommandRefused(R.NO_ARGUMENTS)
        self._sequence(verb)
        self._pending_verb = verb
        return DataRequested(chunking=False)

    def _bdat(self, verb: str, arg: str) -> Event | None:
        parts = arg.split(" ")
        if (
            not 1 <= len(parts) <= 2
            or not _is_digits(parts[0])
            or len(parts[0]) > _MAX_SIZE_DIGITS
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            # The chunk's length is unknown, so its octets cannot be skipped: close.
            raise RemoteProtocolError(R.BDAT_SYNTAX)
        self._bdat_size = int(parts[0])
        self._bdat_last = len(parts) == 2
        try:
            self._sequence(verb)
        except CommandRefused as refused:
            # RFC 3030 2: the chunk's octets are read and discarded after an error.
            self._reply(refused.reply)
            self._start_chunk(skip=True)
            return None
        if self.state is State.CHUNKING:
            self._start_chunk(skip=False)
            return None
        self._pending_verb = verb
        return DataRequested(chunking=True)

    def _rset(self, verb: str, arg: str) -> Event | None:
        if arg.strip(" "):
            raise CommandRefused(R.NO_ARGUMENTS)
        self._reset_transaction()
        self._reply(R.OK)
        return Reset()

    def _noop(self, verb: str, arg: str) -> Event | None:
        self._reply(R.OK)  # RFC 5321 4.1.1.9: a parameter is allowed and ignored
        return None

    def _quit(self, verb: str, arg: str) -> Event | None:
        if arg.strip(" "):
            raise CommandRefused(R.NO_ARGUMENTS)
        self._pending_verb = verb
        return Quit()

    def _vrfy(self, verb: str, arg: str) -> Event | None:
        if not arg.strip(" "):
            raise CommandRefused(R.ARGUMENT_REQUIRED)
        self._reply(R.VRFY_CANNOT)  # RFC 5321 3.5.3: no user lookup, no address harvesting
        return None

    def _starttls(self, verb: str, arg: str) -> Event | None:
        s = self.settings
        if not s.starttls or "STARTTLS" in s.disabled_keywords:
            raise CommandRefused(R.NOT_IMPLEMENTED)
        if arg:
            raise CommandRefused(R.NO_ARGUMENTS)  # RFC 3207 4: 501, no parameters
        if self.tls:
            raise CommandRefused(R.TLS_ALREADY_ACTIVE)  # RFC 3207 4.2: not offered again
        self._sequence(verb)
        if self.authenticated:
            # A TLS layer under an authenticated session would let a man in the middle
            # hand over a session he authenticated in clear (RFC 3207 4.2 resets it).
            raise CommandRefused(R.STARTTLS_AFTER_AUTH)
        self._pending_verb = verb
        return StartTLS()

    def _auth(self, verb: str, arg: str) -> Event | None:
        if not self.settings.auth or self.settings.mode is Mode.LMTP:
            return Unknown(verb, arg)  # NoAuthCmdHandlerLoader, LMTP: no such command
        if self.authenticated:
            raise CommandRefused(R.AUTH_ALREADY)  # RFC 4954 4
        if self.state in (State.MAIL, State.RCPT, State.CHUNKING):
            raise CommandRefused(R.AUTH_IN_TRANSACTION)  # RFC 4954 4
        self._sequence(verb)
        parts = arg.split(" ")
        if not 1 <= len(parts) <= 2 or not _SASL_MECHANISM.fullmatch(parts[0]):
            raise CommandRefused(R.AUTH_SYNTAX)
        if len(parts) == 2 and not parts[1]:
            raise CommandRefused(R.AUTH_SYNTAX)
        self._pending_verb = verb
        return Auth(parts[0].upper(), parts[1] if len(parts) == 2 else None)

    def tls_started(self) -> None:
        """The adapter finished the TLS handshake after STARTTLS's 220.

        Everything learnt in clear text is forgotten (RFC 3207 4.2): the state is
        CONNECTED again, so the client must send EHLO/LHLO first, and STARTTLS is no
        longer offered.

        Raises:
            LocalProtocolError: no STARTTLS was accepted.
        """
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError(f"tls_started() in state {self.state.name}")
        self.tls = True
        self.authenticated = False
        self._reset_transaction()
        self._pending_verb = ""
        self._reader = _Reader.COMMAND
        self.state = State.CONNECTED

    def _expn(self, verb: str, arg: str) -> Event | None:
        self._reply(R.NOT_IMPLEMENTED)
        return None

    def _help(self, verb: str, arg: str) -> Event | None:
        self._reply(R.HELP)
        return None

    # ---- replies from the application ----------------------------------------------

    def send(self, reply: Reply | Sequence[Reply]) -> None:
        """Answer the pending decision.

        Args:
            reply: one reply; for LMTP ``MessageComplete``, one per accepted
                recipient in RCPT order (RFC 2033 4.2).

        Raises:
            LocalProtocolError: no decision pending, or the wrong number of replies.
        """
        event = self._pending
        if event is None:
            raise LocalProtocolError("no decision is pending")
        self._pending = None
        if isinstance(event, MessageComplete):
            replies = [reply] if isinstance(reply, Reply) else list(reply)
            want = self._tx_recipients if self.settings.mode is Mode.LMTP else 1
            if len(replies) != want:
                raise LocalProtocolError(f"{len(replies)} replies for {want} recipients")
            for r in replies:
                self._reply(r)
            self._reset_transaction()
            self.state = State.GREETED
            return
        if not isinstance(reply, Reply):
            raise LocalProtocolError("one reply expected")
        verb = self._pending_verb
        if reply.code == 421:
            # RFC 5321 3.8: the service is closing the transmission channel.
            self._reply(reply)
            self._close(None)
            return
        if isinstance(event, Auth | AuthResponse):
            self._reply(reply)
            if reply.code == 334:
                self.state = State.AUTH  # the next line is a SASL response
            else:
                self.state = State.GREETED
                self.authenticated = reply.positive
            return
        if isinstance(event, Quit):
            self._reply(reply)
            self.state = State.CLOSED
            return
        if isinstance(event, Unknown):
            self._reply(reply)
            return
        if isinstance(event, DataRequested):
            self._answer_data(event, reply)
            return
        if isinstance(event, StartTLS):
            if reply.code != 220:
                self._reply(reply)
                return
            self.state = self._sequence(verb)
            self._reply(reply)
            if self._buf:
                # Pipelined after STARTTLS: in clear text, so never executed (RFC 3207 4,
                # CVE-2011-0411). The 220 goes out all the same, so that the outcome does
                # not depend on how the octets were cut into reads.
                self._close(R.STARTTLS_INJECTION)
            return
        if not reply.positive:
            self._reply(reply)
            return
        target = self._sequence(verb)
        if isinstance(event, Hello):
            self._reset_transaction()
            # The EHLO/HELO/LHLO answer carries no enhanced status code (RFC 2034 3),
            # and a keyword line must start "250-KEYWORD" for clients to parse it.
            reply = Reply(reply.code, "", reply.text)
            if event.extended:
                reply = reply.with_text("\n".join([reply.text, *self.keywords()]))
        elif isinstance(event, MailFrom):
            self._tx_smtputf8 = event.smtputf8
        elif isinstance(event, RcptTo):
            self._tx_recipients += 1
            self._tx_rcpts.append(event.address)
        self.state = target
        self._reply(reply)

    def _answer_data(self, event: DataRequested, reply: Reply) -> None:
        if reply.code != 354:
            self._reply(reply)
            if event.chunking:
                self._start_chunk(skip=True)
            return
        self.state = self._sequence(self._pending_verb)
        self._tx_size = 0
        self._tx_too_big = False
        if event.chunking:
            self._start_chunk(skip=False)
        else:
            self._reply(reply)
            self._dot = DotReader()
            self._reader = _Reader.DATA

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _reset_transaction(self) -> None:
        if self.state in (State.MAIL, State.RCPT, State.CHUNKING, State.DATA):
            self.state = State.GREETED
        self._tx_smtputf8 = False
        self._tx_recipients = 0
        self._tx_rcpts = []
        self._tx_size = 0
        self._tx_too_big = False
        self._chunk = ChunkReader()

    # ---- message text -------------------------------------------------------------

    def _count(self, text: bytes) -> bytes:
        """Count message octets; past the limit, drop the text (RFC 1870 6.3)."""
        self._tx_size += len(text)
        limit = self.settings.max_message_size
        if limit and self._tx_size > limit:
            self._tx_too_big = True
        return b"" if self._tx_too_big else text

    def _read_dot_text(self) -> Event | None:
        try:
            text, done = self._dot.read(self._buf)
        except BareLineEnding:
            raise RemoteProtocolError(R.BARE_LINE_ENDING_DATA) from None
        if done:
            self._reader = _Reader.COMMAND
        text = self._count(text)
        if text:
            self._complete_next = done
            return MessageData(text)
        if done:
            return self._message_end()
        if self._eof:
            self._reader = _Reader.COMMAND
            self.state = State.CLOSED
            return MessageAborted("connection closed during DATA")
        return NEED_DATA

    def _start_chunk(self, *, skip: bool) -> None:
        self._chunk.start(self._bdat_size)
        self._reader = _Reader.SKIP_CHUNK if skip else _Reader.CHUNK

    def _read_chunk(self) -> Event | None:
        chunk = self._chunk
        if chunk.remaining and not self._buf:
            if self._eof:
                skipping = self._reader is _Reader.SKIP_CHUNK
                self._reader = _Reader.COMMAND
                self.state = State.CLOSED
                return None if skipping else MessageAborted("connection closed during BDAT")
            return NEED_DATA
        if self._reader is _Reader.SKIP_CHUNK:
            n = min(chunk.remaining, len(self._buf))
            del self._buf[:n]
            chunk.remaining -= n
            if not chunk.remaining:
                self._reader = _Reader.COMMAND
            return None
        try:
            text = chunk.read(self._buf)
            if not chunk.remaining and self._bdat_last:
                chunk.finish()
        except BareLineEnding:
            raise RemoteProtocolError(R.BARE_LINE_ENDING_DATA) from None
        text = self._count(text)
        if not chunk.remaining:
            self._reader = _Reader.COMMAND
            if self._bdat_last:
                self._complete_next = bool(text)
                return MessageData(text) if text else self._message_end()
            if self._tx_too_big:
                return self._message_end(final=False)
            self._reply(Reply(250, "2.0.0", f"{self._bdat_size} octets received"))
        return MessageData(text) if text else None

    def _message_end(self, *, final: bool = True) -> Event:
        if self._tx_too_big:
            # After the final dot / LAST chunk, LMTP answers per recipient (RFC 2033 4.2).
            # Each names its recipient, as the application's replies after the dot do.
            if final and self.settings.mode is Mode.LMTP:
                too_big = R.MESSAGE_TOO_BIG
                for rcpt in self._tx_rcpts:
                    self._reply(too_big.with_text(f"<{rcpt}> {too_big.text}"))
            else:
                self._reply(R.MESSAGE_TOO_BIG)
            self._reset_transaction()
            return MessageAborted("message too big")
        return MessageComplete(self._tx_size)


_COMMANDS = {
    "HELO": ServerConnection._hello,
    "EHLO": ServerConnection._hello,
    "LHLO": ServerConnection._hello,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data,
    "BDAT": ServerConnection._bdat,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "QUIT": ServerConnection._quit,
    "VRFY": ServerConnection._vrfy,
    "EXPN": ServerConnection._expn,
    "STARTTLS": ServerConnection._starttls,
    "HELP": ServerConnection._help,
    "AUTH": ServerConnection._auth,
}
