"""What every listener file reads alike: ``smtpserver.xml`` and ``lmtpserver.xml``.

James reads these options in ``AbstractConfigurableAsyncServer``, the base of both its SMTP
and its LMTP server, so kittiwake reads them in one place too: the root
(``<Xservers>`` or a bare ``<Xserver>``), ``jmxName``, ``@enabled``, ``connectionBacklog``,
``connectiontimeout`` (seconds), ``connectionLimit``, ``connectionLimitPerIP``,
``helloName``, the greeting (``smtpGreeting`` / ``lmtpGreeting``), ``maxmessagesize`` and
``tls``. ``_smtpserver.py`` and ``_lmtpserver.py`` add what only their protocol reads
(``<bind>``, the handler chain, AUTH, ...) by overriding :meth:`ListenerReader.option`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from kittiwake.config import _security as security
from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._tls import read_listener_tls
from kittiwake.config._values import HostLookup, parse_bool, parse_int, parse_size
from kittiwake.config._xml import element_text, note_attributes, read_xml
from kittiwake.config.model import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    HandlerConfig,
    ListenerConfig,
    Protocol,
    TlsConfig,
)

__all__ = [
    "COMMON_OPTIONS",
    "ListenerReader",
    "autodetected_hello_name",
    "printable_token",
    "read_listeners",
]


def autodetected_hello_name(host: HostLookup) -> str:
    """``helloName autodetect``: the machine's name, ``localhost`` if it has none usable."""
    try:
        name = host.fqdn().strip()
    except OSError:
        return "localhost"
    return name if name and printable_token(name) else "localhost"


def printable_token(text: str) -> bool:
    return all(33 <= ord(ch) <= 126 for ch in text) if text.isascii() else False


def read_listeners(
    reader: type[ListenerReader], path: Path, file: str, host: HostLookup, findings: Findings
) -> list[ListenerConfig]:
    """Read every ``<reader.tag>`` of ``path``; disabled ones are checked and left out.

    Raises:
        ConfigError: not well-formed, or the root is neither ``<tag>s`` nor ``<tag>``.
            Value problems go into ``findings``.
    """
    listeners = []
    for index, element in enumerate(_server_elements(path, file, reader.tag, findings), 1):
        name = reader.default_name(index)
        listener = reader(element, name, host, findings, path.parent).read()
        if listener.enabled:
            listeners.append(listener)
    return listeners


def _server_elements(path: Path, file: str, tag: str, findings: Findings) -> list[ET.Element]:
    """The ``<tag>`` elements of ``path``: the children of ``<tag>s``, or a bare ``<tag>`` root.

    Raises:
        ConfigError: not well-formed, or the root is neither ``<tag>s`` nor ``<tag>``.
    """
    root = read_xml(path, file)
    if root.tag == tag:
        return [root]
    if root.tag != f"{tag}s":
        raise ConfigError(Problem(file, f"<{root.tag}>", f"the root must be <{tag}s> or <{tag}>"))
    note_attributes(root, f"<{tag}s>", findings)
    servers = []
    for child in root:
        if child.tag == tag:
            servers.append(child)
        else:
            findings.ignored(f"<{tag}s>/<{child.tag}>")
    return servers


class ListenerReader:
    """Reads one ``<smtpserver>`` or ``<lmtpserver>``; every option lands in an attribute
    or in findings. Subclasses read their protocol's own options in :meth:`option`."""

    protocol: Protocol
    #: the element name: "smtpserver" or "lmtpserver"
    tag: str
    #: the greeting's element (James: ``smtpGreeting``, ``lmtpGreeting``)
    greeting_tag: str
    #: element names that may be given once only; a second one is an error
    once: frozenset[str]
    #: the element names this reader knows, to catch mis-cased spellings
    known_by_lower: dict[str, str]

    def __init__(
        self,
        element: ET.Element,
        name: str,
        host: HostLookup,
        f: Findings,
        conf_dir: Path = Path("."),
    ) -> None:
        self.conf_dir = conf_dir  # relative <tls> paths are taken from here
        self.tls: TlsConfig | None = None
        self.element = element
        self.host = host
        self.findings = f
        self.name = name
        self.prefix = f'<{self.tag} name="{self.name}">'
        self.enabled = True
        self.gate = security.Gate(f, True)  # replaced in read()
        self.seen: set[str] = set()
        self.backlog = DEFAULT_BACKLOG
        self.timeout = DEFAULT_CONNECTION_TIMEOUT
        self.limit = 0
        self.limit_per_ip = 0
        self.hello_name: str | None = None
        self.greeting: str | None = None
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.handlers: tuple[HandlerConfig, ...] = ()
        self.defaults()

    @classmethod
    def default_name(cls, index: int) -> str:
        """The name of the ``index``-th listener (from 1) when it has no ``jmxName``."""
        return f"{cls.tag}-{index}"

    def defaults(self) -> None:
        """Set the defaults of a protocol's own options."""

    def options(self) -> list[tuple[str, ET.Element]]:
        """(path, element) for each option, in document order."""
        return [(f"{self.prefix}/<{child.tag}>", child) for child in self.element]

    def read(self) -> ListenerConfig:
        # jmxName is read first: every path below names the listener by it.
        for path, element in self.options():
            if element.tag == "jmxName":
                name = self.text(element, path)
                if name == "":
                    self.findings.error(path, "the name is empty")
                elif name is not None:
                    self.name = name
                break
        self.prefix = f'<{self.tag} name="{self.name}">'
        options = self.options()
        note_attributes(self.element, self.prefix, self.findings, frozenset({"enabled"}))
        self.note_inner_attributes()
        raw_enabled = self.element.get("enabled")
        if raw_enabled is not None:
            try:
                self.enabled = parse_bool(raw_enabled)
            except Invalid as exc:
                self.findings.error(f"{self.prefix}/@enabled", str(exc))
        if not self.enabled:
            self.findings.ignored(self.prefix, 'enabled="false": not started')
        self.gate = security.Gate(self.findings, self.enabled)
        self.before_options(options)
        for path, element in options:
            tag = element.tag
            if tag in self.once:
                if tag in self.seen:
                    self.findings.error(
                        path, "given more than once (James would use only the first)"
                    )
                    continue
                self.seen.add(tag)
            if tag == "tls":
                self.tls = read_listener_tls(
                    element, path, self.findings, self.conf_dir, self.enabled
                )
            elif self.option(tag, element, path):
                pass
            elif tag.lower() in self.known_by_lower:
                self.findings.error(
                    path,
                    f"unknown element; did you mean <{self.known_by_lower[tag.lower()]}>? "
                    "(element names are case-sensitive)",
                )
            else:
                self.findings.ignored(path)
        return self.build()

    def note_inner_attributes(self) -> None:
        """Name the attributes of option-holding children (SMTP's James 2.x ``<handler>``)."""

    def before_options(self, options: list[tuple[str, ET.Element]]) -> None:
        """Look over all options before any is read (SMTP: is it the James 2.x layout?)."""

    def option(self, tag: str, element: ET.Element, path: str) -> bool:
        """Read a protocol's own option; False when ``tag`` is not one (nor a common one)."""
        if tag == "helloName":
            self.hello(element, path)
            return True
        if tag in _COMMON_VALUES or tag == self.greeting_tag:
            self.value(tag, element, path)
            return True
        return False

    def value(self, tag: str, element: ET.Element, path: str) -> None:
        """A plain-text option: no attributes, its text applied by :meth:`apply`."""
        note_attributes(element, path, self.findings)
        if tag == "jmxName":
            return  # read before everything else, in read()
        text = self.text(element, path)
        if text is None:
            return
        try:
            self.apply(tag, text, path)
        except Invalid as exc:
            self.findings.error(path, str(exc))

    def apply(self, tag: str, text: str, path: str) -> None:
        """Set the option ``tag`` from its text.

        Raises:
            Invalid: the text is not a value the option takes.
        """
        if tag == "connectionBacklog":
            self.backlog = parse_int(text, low=1)
        elif tag == "connectiontimeout":
            # Seconds. Zero would mean "never time out" in James, which lets idle
            # clients hold connections forever.
            self.timeout = float(parse_int(text, low=1))
        elif tag == "connectionLimit":
            self.limit = parse_int(text, low=0)
        elif tag == "connectionLimitPerIP":
            self.limit_per_ip = parse_int(text, low=0)
        elif tag == self.greeting_tag:
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
                raise Invalid("the greeting must be one line without control characters")
            self.greeting = text or None
        elif tag == "maxmessagesize":
            self.max_message_size = parse_size(text)

    def text(self, element: ET.Element, path: str) -> str | None:
        try:
            return element_text(element)
        except Invalid as exc:
            self.findings.error(path, str(exc))
            return None

    def hello(self, element: ET.Element, path: str) -> None:
        note_attributes(element, path, self.findings, frozenset({"autodetect"}))
        autodetect = True
        raw = element.get("autodetect")
        if raw is not None:
            try:
                autodetect = parse_bool(raw)
            except Invalid as exc:
                self.findings.error(f"{path}/@autodetect", str(exc))
                return
        text = self.text(element, path)
        if autodetect or text is None:
            return  # James ignores the body when autodetect is true
        if not text:
            # James 3 refuses this ("Please configure the helloName or use autodetect");
            # James 2.x used "localhost". We follow James 3.
            self.findings.error(path, 'empty, and autodetect="false"; set a name')
        elif not printable_token(text):
            self.findings.error(path, f"{text!r} has spaces or control characters")
        else:
            self.hello_name = text

    def build(self) -> ListenerConfig:
        """The options every listener has; subclasses add theirs with ``replace``."""
        return ListenerConfig(
            name=self.name,
            protocol=self.protocol,
            enabled=self.enabled,
            connection_backlog=self.backlog,
            connection_timeout=self.timeout,
            connection_limit=self.limit,
            connection_limit_per_ip=self.limit_per_ip,
            hello_name=self.hello_name or autodetected_hello_name(self.host),
            greeting=self.greeting,
            max_message_size=self.max_message_size,
            tls=self.tls,
            handlers=self.handlers,
        )


#: plain-text options both protocols read (``AbstractConfigurableAsyncServer``)
#: (``<bind>`` too, though its form differs: the subclasses' :meth:`ListenerReader.apply`)
_COMMON_VALUES = frozenset(
    {"jmxName", "bind", "connectionBacklog", "connectiontimeout", "connectionLimit"}
    | {"connectionLimitPerIP", "maxmessagesize"}
)
#: every option both protocols read
COMMON_OPTIONS = _COMMON_VALUES | {"helloName", "tls"}
