"""``lmtpserver.xml``: one LMTP :class:`ListenerConfig` per ``<lmtpserver>`` element.

As James reads it (``LMTPServer`` and ``AbstractConfigurableAsyncServer``): ``<lmtpservers>``
holding ``<lmtpserver>`` elements (or one bare ``<lmtpserver>`` root). No file: no LMTP
listener. ``enabled="false"``: not started (its values are still checked); an element
without the attribute is started, as in James (James's sample file ships
``enabled="false"``).

Read: ``jmxName``, ``bind``, ``connectionBacklog``, ``connectiontimeout`` (seconds),
``connectionLimit``, ``connectionLimitPerIP``, ``helloName``, ``lmtpGreeting``,
``maxmessagesize``, ``tls`` (as for SMTP, ``_tls.py``: STARTTLS or implicit TLS),
``proxyRequired`` (fail closed, see ``_security.py``) and ``handlerchain``: James's core
LMTP loader (delivery into the mailboxes) plus handlers as for SMTP (hooks: fast-fail
RCPT checks, message hooks; ``hooks/loader.py`` builds them); the mailet-container
loader is refused. Options James
reads only for SMTP (``smtpGreeting``, ``authRequired``, ``verifyIdentity``, ...) are
named as ignored.

Where kittiwake's defaults differ from James's code: ``<bind>`` absent is ``127.0.0.1:24``
(James: ``0.0.0.0:24``; LMTP has no authentication and must only be reachable by the MTA),
and ``maxmessagesize`` absent is 25 MiB as for SMTP (James: no limit). A ``<bind>`` entry
``unix:/absolute/path`` listens on a Unix-domain socket, which MTAs on the same host prefer
(James has no such form).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from kittiwake.config import _security as security
from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._handlerchain import option_node
from kittiwake.config._smtpserver import autodetected_hello_name
from kittiwake.config._tls import read_listener_tls
from kittiwake.config._values import HostLookup, parse_binds, parse_bool, parse_int, parse_size
from kittiwake.config._xml import element_text, note_attributes, read_xml
from kittiwake.config.model import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    Bind,
    HandlerConfig,
    ListenerConfig,
    Protocol,
    TlsConfig,
)

__all__ = ["DEFAULT_LMTP_BIND", "FILE", "check_lmtp_listeners", "read_lmtpserver"]

FILE = "lmtpserver.xml"
DEFAULT_LMTP_BIND = Bind("127.0.0.1", 24)
_UNIX = "unix:"
#: sun_path holds 108 bytes with the terminating NUL (Linux unix(7))
_MAX_SOCKET_PATH = 107
_VALUES = frozenset(
    {"jmxName", "bind", "connectionBacklog", "connectiontimeout", "connectionLimit"}
    | {"connectionLimitPerIP", "helloName", "lmtpGreeting", "maxmessagesize"}
)
_SECURITY = frozenset({"tls", "proxyRequired", "handlerchain"})
#: read by James's SMTP server only; in an LMTP file they do nothing, in James as here
_SMTP_ONLY = frozenset(
    {"smtpGreeting", "maxLineLength", "heloEhloEnforcement", "addressBracketsEnforcement"}
    | {"disabledFeatures", "auth", "authRequired", "authorizedAddresses", "verifyIdentity"}
)
_KNOWN_BY_LOWER = {name.lower(): name for name in _VALUES | _SECURITY | _SMTP_ONLY}

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
    root = read_xml(path, FILE)
    if root.tag == "lmtpserver":
        servers = [root]
    elif root.tag == "lmtpservers":
        note_attributes(root, "<lmtpservers>", findings)
        servers = []
        for child in root:
            if child.tag == "lmtpserver":
                servers.append(child)
            else:
                findings.ignored(f"<lmtpservers>/<{child.tag}>")
    else:
        raise ConfigError(
            Problem(FILE, f"<{root.tag}>", "the root must be <lmtpservers> or <lmtpserver>")
        )
    listeners = []
    for index, element in enumerate(servers, start=1):
        listener = _LmtpListener(element, index, host, findings, path.parent).read()
        if listener.enabled:
            listeners.append(listener)
    return listeners


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


class _LmtpListener:
    """Reads one ``<lmtpserver>``; every option lands in an attribute or in findings."""

    def __init__(
        self,
        element: ET.Element,
        index: int,
        host: HostLookup,
        f: Findings,
        conf_dir: Path = Path("."),
    ) -> None:
        self.conf_dir = conf_dir  # relative <tls> paths are taken from here
        self.tls: TlsConfig | None = None
        self.element = element
        self.host = host
        self.findings = f
        self.name = "lmtpserver" if index == 1 else f"lmtpserver-{index}"
        self.prefix = f'<lmtpserver name="{self.name}">'
        self.enabled = True
        self.binds: tuple[Bind, ...] = (DEFAULT_LMTP_BIND,)
        self.unix_sockets: tuple[str, ...] = ()
        self.backlog = DEFAULT_BACKLOG
        self.timeout = DEFAULT_CONNECTION_TIMEOUT
        self.limit = 0
        self.limit_per_ip = 0
        self.hello_name: str | None = None
        self.greeting: str | None = None
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.handlers: tuple[HandlerConfig, ...] = ()

    def read(self) -> ListenerConfig:
        for child in self.element:
            if child.tag == "jmxName":
                name = self._text(child, f"{self.prefix}/<jmxName>")
                if name == "":
                    self.findings.error(f"{self.prefix}/<jmxName>", "the name is empty")
                elif name is not None:
                    self.name = name
                break
        self.prefix = f'<lmtpserver name="{self.name}">'
        note_attributes(self.element, self.prefix, self.findings, frozenset({"enabled"}))
        raw_enabled = self.element.get("enabled")
        if raw_enabled is not None:
            try:
                self.enabled = parse_bool(raw_enabled)
            except Invalid as exc:
                self.findings.error(f"{self.prefix}/@enabled", str(exc))
        if not self.enabled:
            self.findings.ignored(self.prefix, 'enabled="false": not started')
        gate = security.Gate(self.findings, self.enabled)
        seen: set[str] = set()
        for child in self.element:
            tag, path = child.tag, f"{self.prefix}/<{child.tag}>"
            if tag in _VALUES or tag in _SECURITY:
                if tag in seen:
                    self.findings.error(
                        path, "given more than once (James would use only the first)"
                    )
                    continue
                seen.add(tag)
            if tag == "tls":
                self.tls = read_listener_tls(
                    child, path, self.findings, self.conf_dir, self.enabled
                )
            elif tag == "proxyRequired":
                security.check_proxy_required(gate, child, path)
            elif tag == "handlerchain":
                self.handlers = _check_handlerchain(gate, child, path)
            elif tag in _VALUES:
                self._value(tag, child, path)
            elif tag in _SMTP_ONLY:
                self.findings.ignored(path, "an SMTP option; James's LMTP server does not read it")
            elif tag.lower() in _KNOWN_BY_LOWER:
                self.findings.error(
                    path,
                    f"unknown element; did you mean <{_KNOWN_BY_LOWER[tag.lower()]}>? "
                    "(element names are case-sensitive)",
                )
            else:
                self.findings.ignored(path)
        return ListenerConfig(
            name=self.name,
            protocol=Protocol.LMTP,
            enabled=self.enabled,
            binds=self.binds,
            unix_sockets=self.unix_sockets,
            connection_backlog=self.backlog,
            connection_timeout=self.timeout,
            connection_limit=self.limit,
            connection_limit_per_ip=self.limit_per_ip,
            hello_name=self.hello_name or autodetected_hello_name(self.host),
            greeting=self.greeting,
            max_message_size=self.max_message_size,
            tls=self.tls,
            handlers=self.handlers,
            # James's LMTPConfiguration turns HELO and bracket enforcement off; kittiwake
            # keeps both on (LHLO first, RFC 2033 4.1; paths in <>): MTAs do both anyway.
        )

    def _text(self, element: ET.Element, path: str) -> str | None:
        try:
            return element_text(element)
        except Invalid as exc:
            self.findings.error(path, str(exc))
            return None

    def _value(self, tag: str, element: ET.Element, path: str) -> None:
        if tag == "helloName":
            self._hello_name(element, path)
            return
        note_attributes(element, path, self.findings)
        text = self._text(element, path)
        if text is None or tag == "jmxName":
            return
        try:
            self._apply(tag, text)
        except Invalid as exc:
            self.findings.error(path, str(exc))

    def _apply(self, tag: str, text: str) -> None:
        if tag == "bind":
            binds, paths = parse_lmtp_binds(text, self.host)
            self.binds, self.unix_sockets = binds, paths
        elif tag == "connectionBacklog":
            self.backlog = parse_int(text, low=1)
        elif tag == "connectiontimeout":
            self.timeout = float(parse_int(text, low=1))  # seconds; 0 is refused as for SMTP
        elif tag == "connectionLimit":
            self.limit = parse_int(text, low=0)
        elif tag == "connectionLimitPerIP":
            self.limit_per_ip = parse_int(text, low=0)
        elif tag == "lmtpGreeting":
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
                raise Invalid("the greeting must be one line without control characters")
            self.greeting = text or None
        elif tag == "maxmessagesize":
            self.max_message_size = parse_size(text)

    def _hello_name(self, element: ET.Element, path: str) -> None:
        note_attributes(element, path, self.findings, frozenset({"autodetect"}))
        autodetect = True
        raw = element.get("autodetect")
        if raw is not None:
            try:
                autodetect = parse_bool(raw)
            except Invalid as exc:
                self.findings.error(f"{path}/@autodetect", str(exc))
                return
        text = self._text(element, path)
        if autodetect or text is None:
            return
        if not text:
            self.findings.error(path, 'empty, and autodetect="false"; set a name')
        elif not text.isascii() or not all(33 <= ord(ch) <= 126 for ch in text):
            self.findings.error(path, f"{text!r} has spaces or control characters")
        else:
            self.hello_name = text


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
    for child in element:
        if not isinstance(child.tag, str):
            continue
        if child.tag != "handler":
            gate.harmless(f"{path}/<{child.tag}>", "not a <handler>")
            continue
        cls = child.get("class", "").strip()
        child_path = f'{path}/<handler class="{cls}">'
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
