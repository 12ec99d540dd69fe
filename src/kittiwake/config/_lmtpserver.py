"""``lmtpserver.xml``: one LMTP :class:`ListenerConfig` per ``<lmtpserver>`` element.

As James reads it (``LMTPServer`` and ``AbstractConfigurableAsyncServer``): ``<lmtpservers>``
holding ``<lmtpserver>`` elements (or one bare ``<lmtpserver>`` root). No file: no LMTP
listener. ``enabled="false"``: not started (its values are still checked); an element
without the attribute is started, as in James (James's sample file ships
``enabled="false"``).

Read: the options both protocols read (``_listener.py``: ``jmxName``,
``connectionBacklog``, ``connectiontimeout`` in seconds, ``connectionLimit``,
``connectionLimitPerIP``, ``helloName``, ``maxmessagesize``, ``tls`` as for SMTP),
``lmtpGreeting``, ``bind``, ``proxyRequired`` (fail closed, see ``_security.py``) and
``handlerchain``: James's core LMTP loader (delivery into the mailboxes) plus handlers
as for SMTP (hooks: fast-fail RCPT checks, message hooks; ``hooks/loader.py`` builds
them); the mailet-container loader is refused. Options James reads only for SMTP
(``smtpGreeting``, ``authRequired``, ``verifyIdentity``, ...) are named as ignored.

Where kittiwake's defaults differ from James's code: ``<bind>`` absent is ``127.0.0.1:24``
(James: ``0.0.0.0:24``; LMTP has no authentication and must only be reachable by the MTA),
and ``maxmessagesize`` absent is 25 MiB as for SMTP (James: no limit). A ``<bind>`` entry
``unix:/absolute/path`` listens on a Unix-domain socket, which MTAs on the same host prefer
(James has no such form).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from kittiwake.config import _security as security
from kittiwake.config._errors import Findings, Invalid, Problem
from kittiwake.config._handlerchain import handler_elements, option_node
from kittiwake.config._listener import COMMON_OPTIONS, ListenerReader, read_listeners
from kittiwake.config._values import HostLookup, parse_binds, parse_bool
from kittiwake.config.model import Bind, HandlerConfig, ListenerConfig, Protocol

__all__ = ["DEFAULT_LMTP_BIND", "FILE", "check_lmtp_listeners", "read_lmtpserver"]

FILE = "lmtpserver.xml"
DEFAULT_LMTP_BIND = Bind("127.0.0.1", 24)
_UNIX = "unix:"
#: sun_path holds 108 bytes with the terminating NUL (Linux unix(7))
_MAX_SOCKET_PATH = 107
_SECURITY = frozenset({"tls", "proxyRequired", "handlerchain"})
#: read by James's SMTP server only; in an LMTP file they do nothing, in James as here
_SMTP_ONLY = frozenset(
    {"smtpGreeting", "maxLineLength", "heloEhloEnforcement", "addressBracketsEnforcement"}
    | {"disabledFeatures", "auth", "authRequired", "authorizedAddresses", "verifyIdentity"}
)
_ONCE = COMMON_OPTIONS | {"lmtpGreeting"} | _SECURITY
_KNOWN_BY_LOWER = {name.lower(): name for name in _ONCE | _SMTP_ONLY}

_LMTP = "org.apache.james.lmtpserver."
_LMTP_CORE = _LMTP + "CoreCmdHandlerLoader"
_LMTP_MAILETS = _LMTP + "MailetContainerCmdHandlerLoader"
_LMTP_JMX = _LMTP + "jmx.JMXHandlersLoader"


def read_lmtpserver(path: Path, host: HostLookup, findings: Findings) -> list[ListenerConfig]:
    """Read every ``<lmtpserver>``; disabled ones are checked and left out of the result.

    Raises:
        ConfigError: not well-formed, or the root is neither ``<lmtpservers>`` nor
            ``<lmtpserver>``. Value problems go into ``findings``.
    """
    return read_listeners(_LmtpListener, path, FILE, host, findings)


def check_lmtp_listeners(
    lmtp: Sequence[ListenerConfig], others: Sequence[ListenerConfig]
) -> list[Problem]:
    """Names unique across all listeners; no address or socket path bound twice."""
    problems = []
    names = {listener.name for listener in others}
    owners: dict[Bind | str, tuple[int, str]] = {}  # -> (listener number, name)
    for number, listener in enumerate(others):
        for bind in listener.binds:
            owners.setdefault(bind, (number, listener.name))
    for number, listener in enumerate(lmtp, start=len(others)):
        where = f'<lmtpserver name="{listener.name}">'
        if listener.name in names:
            problems.append(Problem(FILE, f"{where}/<jmxName>", "another listener uses it"))
        names.add(listener.name)
        keys: list[Bind | str] = [*listener.binds, *listener.unix_sockets]
        for key in keys:
            if isinstance(key, Bind) and key.port == 0:
                continue
            owner_number, owner = owners.setdefault(key, (number, listener.name))
            if owner_number != number:
                shown = key if isinstance(key, Bind) else f"{_UNIX}{key}"
                problems.append(
                    Problem(FILE, f"{where}/<bind>", f"{shown} is also bound by {owner!r}")
                )
    return problems


def parse_lmtp_binds(text: str, host: HostLookup) -> tuple[tuple[Bind, ...], tuple[str, ...]]:
    """``<bind>`` of an LMTP listener: ``host:port`` entries as for SMTP, and
    ``unix:/absolute/path`` entries for Unix-domain sockets.

    Raises:
        Invalid: an entry is malformed.
    """
    binds: list[Bind] = []
    paths: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if entry.lower().startswith(_UNIX):
            socket_path = entry[len(_UNIX) :].strip()
            if not socket_path.startswith("/"):
                raise Invalid(f"{entry!r}: the socket path must be absolute")
            if "\0" in socket_path or len(socket_path.encode()) > _MAX_SOCKET_PATH:
                raise Invalid(f"{entry!r}: a socket path is at most {_MAX_SOCKET_PATH} bytes")
            if socket_path not in paths:
                paths.append(socket_path)
            continue
        for bind in parse_binds(entry, host.resolve):
            if bind not in binds:
                binds.append(bind)
    return tuple(binds), tuple(paths)


class _LmtpListener(ListenerReader):
    """Reads one ``<lmtpserver>``: the common options, ``<bind>`` with Unix-domain
    sockets, ``proxyRequired`` and James's LMTP ``<handlerchain>``."""

    protocol = Protocol.LMTP
    tag = "lmtpserver"
    greeting_tag = "lmtpGreeting"
    once = _ONCE
    known_by_lower = _KNOWN_BY_LOWER

    @classmethod
    def default_name(cls, index: int) -> str:
        return "lmtpserver" if index == 1 else f"lmtpserver-{index}"

    def defaults(self) -> None:
        self.binds: tuple[Bind, ...] = (DEFAULT_LMTP_BIND,)
        self.unix_sockets: tuple[str, ...] = ()

    def option(self, tag: str, element: ET.Element, path: str) -> bool:
        if tag == "proxyRequired":
            security.check_proxy_required(self.gate, element, path)
        elif tag == "handlerchain":
            self.handlers = _check_handlerchain(self.gate, element, path)
        elif tag in _SMTP_ONLY:
            self.findings.ignored(path, "an SMTP option; James's LMTP server does not read it")
        else:
            return super().option(tag, element, path)
        return True

    def apply(self, tag: str, text: str, path: str) -> None:
        if tag == "bind":
            self.binds, self.unix_sockets = parse_lmtp_binds(text, self.host)
        else:
            super().apply(tag, text, path)

    def build(self) -> ListenerConfig:
        # James's LMTPConfiguration turns HELO and bracket enforcement off; kittiwake
        # keeps both on (LHLO first, RFC 2033 4.1; paths in <>): MTAs do both anyway.
        return dataclasses.replace(
            super().build(), binds=self.binds, unix_sockets=self.unix_sockets
        )


def _check_handlerchain(
    gate: security.Gate, element: ET.Element, path: str
) -> tuple[HandlerConfig, ...]:
    """James's LMTP chain: the core loader (mailbox delivery, what kittiwake does) and
    any handler as for SMTP (returned, in order; the hook loader decides whether the
    class exists). The mailet-container loader and custom core packages stop the start."""
    for name, raw in element.attrib.items():
        value, attr_path = raw.strip(), f"{path}/@{name}"
        if name == "coreHandlersPackage" and value != _LMTP_CORE:
            gate.refuse(attr_path, _refusal(value))
        elif name == "jmxHandlersPackage" and value != _LMTP_JMX:
            gate.refuse(attr_path, f"custom JMX handlers ({value}) are not implemented yet")
        elif name == "enableJmx":
            try:
                parse_bool(value)
            except Invalid as exc:
                gate.bad_value(attr_path, str(exc))
        elif name not in ("coreHandlersPackage", "jmxHandlersPackage"):
            gate.harmless(attr_path, "unknown attribute")
    handlers: list[HandlerConfig] = []
    for cls, child, child_path in handler_elements(element, path, gate.findings):
        if cls == _LMTP_MAILETS:
            gate.refuse(child_path, _refusal(cls))
        elif cls == _LMTP_CORE:
            for option in child:
                gate.harmless(f"{child_path}/<{option.tag}>", "handler option")
        elif not cls:
            gate.bad_value(child_path, "the class attribute is missing or empty")
        elif gate.enabled:
            handlers.append(HandlerConfig(cls, option_node(child), child_path, FILE))
    return tuple(handlers)


def _refusal(cls: str) -> str:
    if cls == _LMTP_MAILETS:
        return (
            "the mailet container is not implemented yet (LMTP delivers straight into "
            f"the mailboxes, as {_LMTP_CORE} does); use that loader"
        )
    return (
        f"a custom LMTP core ({cls}) is not implemented; use {_LMTP_CORE} and add "
        "handlers with <handler class=...>"
    )
