"""``smtpserver.xml``: one :class:`ListenerConfig` per ``<smtpserver>`` element.

Two layouts are read:

* James 3: ``<smtpservers>`` holding ``<smtpserver>`` elements (or one bare
  ``<smtpserver>`` root), options as direct children, ``<bind>ip:port,...</bind>``,
  ``<connectiontimeout>`` in seconds.
* James 2.x (``config.xml``'s block): ``<port>``, an optional ``<bind>`` holding only an
  address, and most options inside ``<handler>``; there ``<connectiontimeout>`` is in
  **milliseconds** (James 2.3 ``AbstractJamesService``: default ``5 * 60 * 1000``). The
  presence of ``<port>`` is what marks this layout. Options inside ``<handler>`` are
  also read in a James 3 file (the old ``handler.``-prefixed docs).

Where kittiwake's default differs from James's: ``maxmessagesize`` absent is 25 MiB
(James: no limit), the safe default. ``<bind>`` absent is ``0.0.0.0:25`` as in James.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from kittiwake.config import _security as security
from kittiwake.config._auth import AUTH_ELEMENTS, AuthReader
from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._handlerchain import read_handlerchain
from kittiwake.config._tls import read_listener_tls
from kittiwake.config._values import (
    HostLookup,
    parse_address,
    parse_binds,
    parse_bool,
    parse_int,
    parse_size,
)
from kittiwake.config._xml import element_text, note_attributes, read_xml
from kittiwake.config.model import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    Bind,
    HandlerConfig,
    ListenerConfig,
    TlsConfig,
)

__all__ = ["FILE", "autodetected_hello_name", "read_smtpserver"]

FILE = "smtpserver.xml"
_JAMES_DEFAULT_PORT = 25
_MAX_LINE = (1000, 1048576)  # James SMTPServer: maxLineLength outside this is an error

_SECURITY: dict[str, Callable[[security.Gate, ET.Element, str], None]] = {
    "proxyRequired": security.check_proxy_required,
    "useTLS": security.check_use_tls,
    "serverSocketType": security.check_server_socket_type,
}
_VALUES = frozenset(
    {"jmxName", "bind", "port", "connectionBacklog", "connectiontimeout", "connectionLimit"}
    | {"connectionLimitPerIP", "helloName", "smtpGreeting", "maxmessagesize", "maxLineLength"}
    | {"heloEhloEnforcement", "addressBracketsEnforcement", "disabledFeatures"}
    | {"handlerchain", "tls"}  # read by _handlerchain.py and _tls.py
)
_KNOWN_BY_LOWER = {name.lower(): name for name in _VALUES | security.SECURITY_ELEMENTS}


def autodetected_hello_name(host: HostLookup) -> str:
    """``helloName autodetect``: the machine's name, ``localhost`` if it has none usable."""
    try:
        name = host.fqdn().strip()
    except OSError:
        return "localhost"
    return name if name and _printable_token(name) else "localhost"


def _printable_token(text: str) -> bool:
    return all(33 <= ord(ch) <= 126 for ch in text) if text.isascii() else False


def read_smtpserver(path: Path, host: HostLookup, findings: Findings) -> list[ListenerConfig]:
    """Read every ``<smtpserver>``; disabled ones are checked and left out of the result.

    Raises:
        ConfigError: not well-formed, or the root is neither ``<smtpservers>`` nor
            ``<smtpserver>``. Value problems go into ``findings``.
    """
    root = read_xml(path, FILE)
    if root.tag == "smtpserver":
        servers = [root]
    elif root.tag == "smtpservers":
        note_attributes(root, "<smtpservers>", findings)
        servers = []
        for child in root:
            if child.tag == "smtpserver":
                servers.append(child)
            else:
                findings.ignored(f"<smtpservers>/<{child.tag}>")
    else:
        raise ConfigError(
            Problem(FILE, f"<{root.tag}>", "the root must be <smtpservers> or <smtpserver>")
        )
    listeners = []
    for index, element in enumerate(servers, start=1):
        listener = _Listener(element, index, host, findings, path.parent).read()
        if listener.enabled:
            listeners.append(listener)
    return listeners


class _Listener:
    """Reads one ``<smtpserver>``; every option lands in an attribute or in findings."""

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
        self.auth = AuthReader(security.Gate(f, True), host.resolve)  # replaced in read()
        self.element = element
        self.host = host
        self.findings = f
        self.name = f"smtpserver-{index}"
        self.prefix = f'<smtpserver name="{self.name}">'
        self.enabled = True
        self.old_layout = False
        self.seen: set[str] = set()
        self.bind_text: tuple[str, str] | None = None  # (text, path)
        self.port: int | None = None
        self.backlog = DEFAULT_BACKLOG
        self.timeout = DEFAULT_CONNECTION_TIMEOUT
        self.limit = 0
        self.limit_per_ip = 0
        self.hello_name: str | None = None
        self.greeting: str | None = None
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.max_line_length = DEFAULT_MAX_LINE_LENGTH
        self.helo_ehlo = True
        self.brackets = True
        self.disabled: list[str] = []
        self.handlers: tuple[HandlerConfig, ...] = ()
        self.core_handlers = "CoreCmdHandlerLoader"

    def _options(self) -> list[tuple[str, ET.Element]]:
        """(path, element) for each option, in document order, ``<handler>`` flattened."""
        options = []
        for child in self.element:
            if child.tag == "handler":
                for inner in child:
                    options.append((f"{self.prefix}/<handler>/<{inner.tag}>", inner))
            else:
                options.append((f"{self.prefix}/<{child.tag}>", child))
        return options

    def read(self) -> ListenerConfig:
        raw_enabled = self.element.get("enabled")
        # jmxName is read first: every path below names the listener by it.
        for path, element in self._options():
            if element.tag == "jmxName":
                name = self._text(element, path)
                if name == "":
                    self.findings.error(path, "the name is empty")
                elif name is not None:
                    self.name = name
                break
        self.prefix = f'<smtpserver name="{self.name}">'
        options = self._options()
        note_attributes(self.element, self.prefix, self.findings, frozenset({"enabled"}))
        for child in self.element.findall("handler"):
            note_attributes(child, f"{self.prefix}/<handler>", self.findings)
        if raw_enabled is not None:
            try:
                self.enabled = parse_bool(raw_enabled)
            except Invalid as exc:
                self.findings.error(f"{self.prefix}/@enabled", str(exc))
        if not self.enabled:
            self.findings.ignored(self.prefix, 'enabled="false": not started')
        self.old_layout = any(element.tag == "port" for _, element in options)
        gate = security.Gate(self.findings, self.enabled)
        self.auth = AuthReader(gate, self.host.resolve)
        for path, element in options:
            tag = element.tag
            known = tag in _VALUES or tag in _SECURITY or tag in AUTH_ELEMENTS
            if known and tag in self.seen and tag != "disabledFeatures":
                self.findings.error(path, "given more than once (James would use only the first)")
                continue
            self.seen.add(tag)
            if tag == "tls":
                self.tls = read_listener_tls(
                    element, path, self.findings, self.conf_dir, self.enabled
                )
            elif tag in AUTH_ELEMENTS or tag.startswith("auth."):
                self.auth.read(tag, element, path)
            elif tag in _SECURITY:
                _SECURITY[tag](gate, element, path)
            elif tag in _VALUES:
                self._value(tag, element, path)
            elif tag.lower() in _KNOWN_BY_LOWER:
                self.findings.error(
                    path,
                    f"unknown element; did you mean <{_KNOWN_BY_LOWER[tag.lower()]}>? "
                    "(element names are case-sensitive)",
                )
            else:
                self.findings.ignored(path)
        return self._build()

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
        if tag == "handlerchain":
            chain = read_handlerchain(element, path, self.findings)
            self.handlers, self.core_handlers = chain.handlers, chain.core
            return
        note_attributes(element, path, self.findings)
        if tag == "jmxName":
            return  # read before everything else, in read()
        text = self._text(element, path)
        if text is None:
            return
        try:
            self._apply(tag, text, path)
        except Invalid as exc:
            self.findings.error(path, str(exc))

    def _apply(self, tag: str, text: str, path: str) -> None:
        if tag == "bind":
            self.bind_text = (text, path)
        elif tag == "port":
            self.port = parse_int(text, 0, 65535)
        elif tag == "connectionBacklog":
            self.backlog = parse_int(text, low=1)
        elif tag == "connectiontimeout":
            # Seconds in James 3; milliseconds in James 2.x. Zero would mean "never
            # time out" in James, which lets idle clients hold connections forever.
            if self.old_layout:
                try:
                    self.timeout = parse_int(text, low=1000) / 1000
                except Invalid as exc:
                    raise Invalid(
                        f"{exc} (milliseconds: <port> marks the James 2.x layout)"
                    ) from None
            else:
                self.timeout = float(parse_int(text, low=1))
        elif tag == "connectionLimit":
            self.limit = parse_int(text, low=0)
        elif tag == "connectionLimitPerIP":
            self.limit_per_ip = parse_int(text, low=0)
        elif tag == "smtpGreeting":
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
                raise Invalid("the greeting must be one line without control characters")
            self.greeting = text or None
        elif tag == "maxmessagesize":
            self.max_message_size = parse_size(text)
        elif tag == "maxLineLength":
            self.max_line_length = parse_int(text, *_MAX_LINE)
        elif tag == "heloEhloEnforcement":
            self.helo_ehlo = parse_bool(text)
        elif tag == "addressBracketsEnforcement":
            self.brackets = parse_bool(text)
        elif tag == "disabledFeatures":
            # James reads repeated elements (getStringArray), one keyword each, and
            # compares them with the EHLO keywords; a list in one element would match
            # nothing, so it is refused rather than silently doing nothing.
            keyword = text.upper()
            if not keyword or not all(ch.isalnum() or ch == "-" for ch in keyword):
                raise Invalid(f"{text!r} is not one EHLO keyword (use one element each)")
            if keyword not in self.disabled:
                self.disabled.append(keyword)

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
            return  # James ignores the body when autodetect is true
        if not text:
            # James 3 refuses this ("Please configure the helloName or use autodetect");
            # James 2.x used "localhost". We follow James 3.
            self.findings.error(path, 'empty, and autodetect="false"; set a name')
        elif not _printable_token(text):
            self.findings.error(path, f"{text!r} has spaces or control characters")
        else:
            self.hello_name = text

    def _binds(self) -> tuple[Bind, ...]:
        resolve = self.host.resolve
        if self.old_layout:
            port = self.port if self.port is not None else _JAMES_DEFAULT_PORT
            if self.bind_text is None or not self.bind_text[0]:
                return (Bind("0.0.0.0", port),)
            text, path = self.bind_text
            try:
                return tuple(Bind(address, port) for address in parse_address(text, resolve))
            except Invalid as exc:
                self.findings.error(path, f"{exc} (with <port>, <bind> holds only an address)")
                return ()
        if self.bind_text is None:
            return (Bind("0.0.0.0", _JAMES_DEFAULT_PORT),)
        text, path = self.bind_text
        try:
            return parse_binds(text, resolve)
        except Invalid as exc:
            self.findings.error(path, str(exc))
            return ()

    def _build(self) -> ListenerConfig:
        return ListenerConfig(
            name=self.name,
            enabled=self.enabled,
            binds=self._binds(),
            connection_backlog=self.backlog,
            connection_timeout=self.timeout,
            connection_limit=self.limit,
            connection_limit_per_ip=self.limit_per_ip,
            hello_name=self.hello_name or autodetected_hello_name(self.host),
            greeting=self.greeting,
            max_message_size=self.max_message_size,
            max_line_length=self.max_line_length,
            helo_ehlo_enforcement=self.helo_ehlo,
            address_brackets_enforcement=self.brackets,
            disabled_features=frozenset(self.disabled),
            tls=self.tls,
            auth_required=self.auth.required,
            auth=self.auth.build(command=self.core_handlers != "NoAuthCmdHandlerLoader"),
            handlers=self.handlers,
            core_handlers=self.core_handlers,
        )
