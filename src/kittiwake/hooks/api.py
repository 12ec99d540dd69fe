"""What a hook sees and implements (the documented API: see ``docs/hooks.md``).

A hook is an object with any of the ``on_*`` coroutine methods of :class:`Hook`;
those it does not define answer DECLINED (subclassing :class:`Hook` is the easy way).
Hooks run in order, configured ones first, then kittiwake's own rules; see
``result.py`` for what each answer does. Hooks are ``async``: one that waits (DNS, a
database) holds up only its own session. One that must block calls
``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kittiwake.protocol import MailFrom, RcptTo, Reply

from .options import HandlerOptions
from .result import DECLINED, HookResult

if TYPE_CHECKING:
    from kittiwake.dnsservice import DnsService
    from kittiwake.storage.base import DomainStore, HookStores, UserStore

__all__ = ["HEADER_LIMIT", "Hook", "Message", "Services", "SessionInfo"]

#: bytes of the client's header section kept for message hooks
HEADER_LIMIT = 1024 * 1024


@dataclass(slots=True)
class SessionInfo:
    """One connection as hooks and policy see it. Kept up to date by the session.

    Hooks read it; they write only ``state``. Changing the other fields does not
    change what kittiwake's own rules decide.
    """

    listener: str
    protocol: str  # "SMTP" or "LMTP"
    client_ip: str
    client_port: int
    session_id: str
    helo: str | None = None
    esmtp: bool = False
    #: the SASL identity once AUTH succeeded
    authenticated_user: str | None = None
    tls: bool = False
    #: the TLS protocol and cipher once the connection is encrypted ("TLSv1.3",
    #: "TLS_AES_256_GCM_SHA384", 256), for the Received header and hooks
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int = 0
    #: the current transaction: None before MAIL is accepted; "" is the null sender
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    smtputf8: bool = False
    #: the client's address is in the listener's ``authorizedAddresses`` (set by the server)
    trusted_network: bool = False
    #: time.time() when the connection was accepted
    connected_at: float = field(default_factory=time.time)
    #: per-connection scratch space for hooks (James's connection state); key it by
    #: something of your own, e.g. ``id(self)`` or your class name
    state: dict[Any, Any] = field(default_factory=dict)
    #: set by the server: closes the connection now, with an optional last reply
    closer: Callable[[Reply | None], None] | None = field(default=None, repr=False)

    @property
    def relaying_allowed(self) -> bool:
        """Authenticated, or from a trusted network: James's ``isRelayingAllowed``."""
        return self.authenticated_user is not None or self.trusted_network

    def close(self, reply: Reply | None = None) -> None:
        """Close the connection now (from a timer, say), after ``reply`` if given."""
        if self.closer is not None:
            self.closer(reply)


@dataclass(frozen=True, slots=True)
class Services:
    """What kittiwake gives hooks at start (``Hook.start``)."""

    listener: str
    hostname: str
    #: the data directory; a hook keeps its own files under it
    data_dir: Path
    dns: DnsService
    domains: DomainStore
    users: UserStore
    #: opens the stores of the provided handlers that remember (greylisting, rate
    #: limits, spam traps), shared by every worker process
    stores: HookStores


class Message:
    """The message at the end of DATA, as message hooks see it.

    Attributes:
        queue_id: the spool entry's ID.
        size: octets of the client's text (dot-stuffing undone, trace headers not
            counted).
        header: the client's header section up to and including the empty line that
            ends it, at most :data:`HEADER_LIMIT` bytes.
        header_complete: False when the header section is longer than the limit or
            the text has no empty line (then ``header`` is the first bytes only).
    """

    def __init__(
        self,
        queue_id: str,
        size: int,
        header: bytes,
        header_complete: bool,
        path_of: Callable[[], str] | None = None,
    ) -> None:
        self.queue_id = queue_id
        self.size = size
        self.header = header
        self.header_complete = header_complete
        self._path_of = path_of
        #: header edits asked for: (name, value, replace existing fields)
        self.edits: list[tuple[str, str, bool]] = []

    def header_fields(self) -> list[tuple[str, str]]:
        """``(name, value)`` per header field, in order; folded lines are unfolded."""
        return [(name, value) for name, value, _ in split_header(self.header)]

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for n, value in self.header_fields() if n.lower() == wanted]

    def add_header(self, name: str, value: str) -> None:
        """Add a field at the top of the client's header (after the trace headers).

        Raises:
            ValueError: not a valid field name, or a value with CR or LF.
        """
        self.edits.append((_check_name(name), _check_value(value), False))

    def set_header(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one ``name: value`` (James's
        ``setHeader``)."""
        self.edits.append((_check_name(name), _check_value(value), True))

    def path(self) -> str:
        """The spool file holding the trace headers and the whole text, for a hook
        that must read everything (blocking: the message is written out first, so call
        it through ``asyncio.to_thread`` for large messages)."""
        if self._path_of is None:
            raise RuntimeError("the message text is not available")
        return self._path_of()


def _check_name(name: str) -> str:
    # RFC 5322 3.6.8: printable US-ASCII except the colon
    if not name or not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
        raise ValueError(f"not a header field name: {name!r}")
    return name


def _check_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value must not contain CR or LF")
    return value


def split_header(header: bytes) -> list[tuple[str, str, bytes]]:
    """``(name, unfolded value, raw bytes)`` per field of a header section."""
    fields: list[tuple[str, str, bytes]] = []
    raw: list[bytes] = []
    for line in header.split(b"\r\n")[:-1] if header.endswith(b"\r\n") else header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and raw:
            raw.append(line)
            continue
        if raw:
            fields.append(_field(raw))
        raw = [line] if line else []
    if raw:
        fields.append(_field(raw))
    return fields


def _field(lines: list[bytes]) -> tuple[str, str, bytes]:
    text = b"\r\n".join(lines).decode("utf-8", "replace")
    name, _, value = text.partition(":")
    unfolded = value.replace("\r\n", "").strip()
    return name.strip(), unfolded, b"\r\n".join(lines) + b"\r\n"


class Hook:
    """Base class for hooks: every method declines.

    A configured hook is created with its ``<handler>`` element's options, started once
    with :class:`Services` before the listener accepts connections, and stopped at
    shutdown. ``mail_parameters`` names the MAIL FROM parameters (upper case) whose
    ``on_mail_parameter`` this hook wants; the core then accepts them.
    """

    mail_parameters: frozenset[str] = frozenset()

    def __init__(self, options: HandlerOptions | None = None) -> None:
        self.options = options if options is not None else HandlerOptions()

    async def start(self, services: Services) -> None:
        """Called once before the listener accepts connections."""

    async def stop(self) -> None:
        """Called once at shutdown, after the last session ended."""

    async def on_connect(self, session: SessionInfo) -> HookResult:
        """A client connected; DENY or DENYSOFT sends the reply and closes."""
        return DECLINED

    async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
        """HELO, EHLO (or LHLO) with the client's name."""
        return DECLINED

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        """MAIL FROM; ``mail.address`` is "" for the null sender."""
        return DECLINED

    async def on_mail_parameter(
        self, session: SessionInfo, name: str, value: str | None
    ) -> HookResult:
        """One MAIL FROM parameter this hook declared in ``mail_parameters``; asked
        before ``on_mail``."""
        return DECLINED

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        """RCPT TO; ``session.recipients`` holds those accepted so far."""
        return DECLINED

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        """The end of DATA (or the last BDAT), before the message is queued."""
        return DECLINED

    async def on_auth(
        self, session: SessionInfo, mechanism: str, user: str | None, success: bool
    ) -> HookResult:
        """After a SASL exchange; DENY or DENYSOFT turn a success into a refusal, but
        nothing turns a failure into a success."""
        return DECLINED

    async def on_quit(self, session: SessionInfo) -> HookResult:
        return DECLINED

    async def on_unknown(self, session: SessionInfo, verb: str) -> HookResult:
        """A command kittiwake does not know (before ``500 5.5.1``)."""
        return DECLINED

    async def on_disconnect(self, session: SessionInfo) -> None:
        """The connection ended, however it ended. No answer."""
        return None
