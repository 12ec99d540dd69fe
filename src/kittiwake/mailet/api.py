"""The mailet API: what a matcher or a mailet sees, and what it may do.

This is the contract for custom matchers and mailets written in Python (see
``docs/mailets.md``). A custom class is named in ``mailetcontainer.xml`` by its dotted
path (``class="mypkg.mailets.Stamp"`` or ``match="mypkg.matchers:IsFriday=fri"``).

* A :class:`Matcher` gets the condition text after ``=`` in :meth:`Matcher.init` and
  answers :meth:`Matcher.match` with the recipients it matches (a subset of
  ``mail.recipients``). Matching some but not all of them splits the mail, as James
  does: the matched recipients go through the mailet, the others go on down the
  processor.
* A :class:`Mailet` gets its child elements as :class:`MailetConfig` parameters in
  :meth:`Mailet.init`, then :meth:`Mailet.service` for every mail that its matcher
  selected. It may change the message headers (:class:`~.message.Message`), the
  recipients, ``mail.state`` (``"ghost"`` ends processing; another processor name
  sends it there, which is what ``ToProcessor`` does), and it may hand new mails to
  :meth:`MailetContext.send_mail`.

Both run in a delivery worker thread; they may block briefly (file I/O) but should not
wait on the network for long: every mail of the batch waits with them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kittiwake.mailet.message import Message

if TYPE_CHECKING:
    from kittiwake.mailet.repository import MailRepository
    from kittiwake.policy.rewrite import RewriteTable

__all__ = [
    "ERROR",
    "GHOST",
    "ROOT",
    "Mail",
    "Mailet",
    "MailetConfig",
    "MailetContext",
    "MailetError",
    "Matcher",
    "MessagingError",
]

ROOT = "root"
ERROR = "error"
GHOST = "ghost"


class MessagingError(Exception):
    """A matcher or mailet failed for this mail (James ``MessagingException``): the
    mail goes to ``onMailetException`` / ``onMatchException`` (``error`` by default)."""


class MailetError(MessagingError):
    """Raised by :meth:`Mailet.init` or :meth:`Matcher.init` for a bad parameter; the
    start stops with file, element and this reason."""


@dataclass
class Mail:
    """A message being processed: envelope, message, state and attributes.

    Attributes:
        name: unique name; the spool queue ID for a received message, a derived name
            (``<queue id>-<suffix>``) for mails created by mailets, such as bounces.
        sender: the reverse path; None for the null sender ``<>``.
        recipients: the forward paths still being processed, in order.
        state: the processor the mail is in (``root`` to start; ``ghost`` = finished).
        message: the message text (headers editable, body read lazily).
        remote_addr: the client's IP address.
        remote_host: the name it gave in HELO/EHLO.
        auth_user: the SASL-authenticated user, None if the client did not AUTH.
        auth_network: the client was in the listener's ``authorizedAddresses``.
        attributes: James's mail attributes (``SentByMailet``, reprocessing marks...).
        error_message: why the mail went to the error processor (or a ``notice``).
        received_at: Unix time of reception.
    """

    name: str
    sender: str | None
    recipients: list[str]
    message: Message
    state: str = ROOT
    remote_addr: str = "127.0.0.1"
    remote_host: str = "localhost"
    auth_user: str | None = None
    auth_network: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None
    received_at: float = 0.0
    #: per-recipient header fields added at delivery (AddDeliveredToHeader)
    per_recipient_headers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: kittiwake: the envelope recipient index each recipient comes from (outcomes)
    origins: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the message as it is now."""
        return self.message.size

    def duplicate(self, name: str | None = None) -> Mail:
        """A copy that can be processed separately (recipients, headers, attributes).

        Args:
            name: the copy's name; default: the same name.
        """
        return Mail(
            name=self.name if name is None else name,
            sender=self.sender,
            recipients=list(self.recipients),
            message=self.message.copy(),
            state=self.state,
            remote_addr=self.remote_addr,
            remote_host=self.remote_host,
            auth_user=self.auth_user,
            auth_network=self.auth_network,
            attributes=dict(self.attributes),
            error_message=self.error_message,
            received_at=self.received_at,
            per_recipient_headers={k: list(v) for k, v in self.per_recipient_headers.items()},
            origins=dict(self.origins),
        )

    def origin_of(self, recipient: str) -> int | None:
        """The envelope recipient index ``recipient`` stands for (None: not known)."""
        return self.origins.get(recipient)

    def replace_recipients(self, mapping: Mapping[str, Iterable[str]]) -> None:
        """Replace each recipient by the addresses it maps to (order kept, each once);
        a new address inherits the envelope index of the recipient it came from."""
        out: list[str] = []
        seen: set[str] = set()
        for rcpt in self.recipients:
            origin = self.origins.get(rcpt)
            for new in mapping.get(rcpt, (rcpt,)):
                key = new.lower()
                if key in seen:
                    continue
                seen.add(key)
                out.append(new)
                if origin is not None:
                    self.origins.setdefault(new, origin)
        self.recipients = out


class MailetContext(Protocol):
    """What the container offers matchers and mailets (James ``MailetContext``)."""

    #: the postmaster address (``<context><postmaster>``)
    postmaster: str
    #: the server's name (the first listener's helloName)
    hostname: str

    def is_local_server(self, domain: str) -> bool:
        """``domain`` is one of ours (domain list, or an alias domain)."""
        ...

    def is_local_email(self, address: str) -> bool:
        """``address`` has a mailbox here (a user, or postmaster/abuse of a local domain)."""
        ...

    def mailbox_of(self, address: str) -> str | None:
        """The canonical mailbox ``address`` is delivered to, None if none."""
        ...

    def send_mail(self, mail: Mail, state: str = ROOT, *, derived: bool = True) -> None:
        """Process ``mail`` (a new mail made by a mailet, e.g. a bounce) from ``state``.

        It is processed within the same attempt as the mail that made it; with
        ``derived`` it gets a name derived from that mail's, so that a retry after a
        crash makes the very same mail and its deliveries stay idempotent. Without,
        it is a part of the current mail (some of its recipients) sent elsewhere.
        """
        ...

    def enqueue(self, mail: Mail, key: str) -> str:
        """Put ``mail`` in the spool as a new mail with its own queue ID, to be
        processed later from ``root`` (James's ``sendMail``; ``SentByMailet`` matches
        it). This is how RecipientRewriteTable sends a forward's remote targets.

        The new mail is durable when this returns, and it is made once per ``key``
        for the mail being processed, even if a crash makes that mail run again: the
        new mail is held back until the mail that made it has durably recorded it.
        Without a spool (in-process tests) it is processed at once, as
        :meth:`send_mail` does.

        Returns:
            The new mail's queue ID.

        Raises:
            OSError: it could not be spooled (defer the recipients and try later).
        """
        ...

    def rewrite_table(self) -> RewriteTable:
        """The recipient rewrite table now (``kittiwake alias``)."""
        ...

    def repository(self, url: str) -> MailRepository:
        """The mail repository for a James URL (``file://var/mail/error/``)."""
        ...

    def log(self, message: str) -> None:
        """Log on ``kittiwake.mailet``."""
        ...

    # kittiwake's additions: what became of the recipients (the spool entry is
    # removed only when every recipient has a final outcome, see container.py)

    def over_quota(self, address: str, size: int) -> str | None:
        """Why a message of ``size`` bytes does not fit in the mailbox of ``address``
        (its Maildir++ quota); None if it fits or the mailbox has no limit."""
        ...

    def deliver_local(self, mail: Mail) -> None:
        """Deliver ``mail`` to the mailboxes of its recipients (LocalDelivery). The
        deliveries of a whole batch are made together, after processing."""
        ...

    def defer(self, mail: Mail, reason: str) -> None:
        """Keep ``mail``'s recipients in the spool and process them again later."""
        ...

    def finished(self, mail: Mail, detail: str, *, failed: bool = False) -> None:
        """``mail``'s recipients are done with (stored, discarded; ``failed``: not
        delivered), for the log and the spool."""
        ...

    def hold(self, mail: Mail, detail: str) -> Callable[[bool], None] | None:
        """Keep the spool entry ``mail`` came from until the returned function is called
        (on the event loop; True: its recipients are taken care of for good, False:
        they must run through the container again). None: this mail cannot be held
        (not the spool entry's own mail, or no spool runner here): store it instead."""
        ...


class MailetConfig:
    """A mailet's (or matcher's) configuration: its name and its parameters."""

    def __init__(
        self,
        name: str,
        params: Mapping[str, str],
        context: MailetContext,
        condition: str | None = None,
    ) -> None:
        self.name = name
        self.params = dict(params)
        self.context = context
        #: a matcher's text after ``=`` (None: there was no ``=``)
        self.condition = condition
        #: parameters a mailet read (the others are named at start)
        self.read: set[str] = set()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The parameter ``name`` (James's ``getInitParameter``), case as written."""
        self.read.add(name)
        return self.params.get(name, default)

    def get_bool(self, name: str, default: bool) -> bool:
        """A boolean parameter (``true``/``false``/``yes``/``no``).

        Raises:
            MailetError: any other value.
        """
        value = self.get(name)
        if value is None or value == "":
            return default
        low = value.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        raise MailetError(f"<{name}>: {value!r} is not true or false")

    def get_int(self, name: str, default: int) -> int:
        """An integer parameter.

        Raises:
            MailetError: not an integer.
        """
        value = self.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise MailetError(f"<{name}>: {value!r} is not a whole number") from None


class Matcher:
    """Base class of matchers. Subclasses override :meth:`match` (and :meth:`init`)."""

    config: MailetConfig

    def init(self, config: MailetConfig) -> None:
        """Read the condition (``config.condition``).

        Raises:
            MailetError: the condition is unusable.
        """
        self.config = config

    @property
    def context(self) -> MailetContext:
        return self.config.context

    def match(self, mail: Mail) -> Collection[str]:
        """The recipients of ``mail`` that match (a subset of ``mail.recipients``).

        Raises:
            MessagingError: cannot decide (``onMatchException`` applies).
        """
        raise NotImplementedError


class Mailet:
    """Base class of mailets. Subclasses override :meth:`service` (and :meth:`init`)."""

    config: MailetConfig

    def init(self, config: MailetConfig) -> None:
        """Read parameters with ``config.get...``.

        Raises:
            MailetError: a parameter is unusable.
        """
        self.config = config

    @property
    def context(self) -> MailetContext:
        return self.config.context

    def service(self, mail: Mail) -> None:
        """Act on ``mail`` (only its matched recipients are in ``mail.recipients``).

        Raises:
            MessagingError: failed (``onMailetException`` applies).
        """
        raise NotImplementedError

    def destroy(self) -> None:
        """Called once at stop."""


#: a compiled matcher: mail -> matched recipients
MatchFn = Callable[[Mail], Collection[str]]
