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

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from kittiwake.config import _security as security
from kittiwake.config._auth import AUTH_ELEMENTS, AuthReader
from kittiwake.config._errors import Findings, Invalid
from kittiwake.config._handlerchain import read_handlerchain
from kittiwake.config._listener import (
    COMMON_OPTIONS,
    ListenerReader,
    autodetected_hello_name,
    read_listeners,
)
from kittiwake.config._values import HostLookup, parse_address, parse_binds, parse_bool, parse_int
from kittiwake.config._xml import note_attributes
from kittiwake.config.model import DEFAULT_MAX_LINE_LENGTH, Bind, ListenerConfig, Protocol

__all__ = ["FILE", "autodetected_hello_name", "read_smtpserver"]

FILE = "smtpserver.xml"
_JAMES_DEFAULT_PORT = 25
_MAX_LINE = (1000, 1048576)  # James SMTPServer: maxLineLength outside this is an error

_SECURITY: dict[str, Callable[[security.Gate, ET.Element, str], None]] = {
    "proxyRequired": security.check_proxy_required,
    "useTLS": security.check_use_tls,
    "serverSocketType": security.check_server_socket_type,
}
_VALUES = COMMON_OPTIONS | (
    {"port", "smtpGreeting", "maxLineLength", "heloEhloEnforcement"}
    | {"addressBracketsEnforcement", "disabledFeatures"}
    | {"handlerchain"}  # read by _handlerchain.py
)
#: ``disabledFeatures`` is repeated, one keyword each (James reads a string array)
_ONCE = (_VALUES | frozenset(_SECURITY) | AUTH_ELEMENTS) - {"disabledFeatures"}
_KNOWN_BY_LOWER = {name.lower(): name for name in _VALUES | security.SECURITY_ELEMENTS}


def read_smtpserver(path: Path, host: HostLookup, findings: Findings) -> list[ListenerConfig]:
    """Read every ``<smtpserver>``; disabled ones are checked and left out of the result.

    Raises:
        ConfigError: not well-formed, or the root is neither ``<smtpservers>`` nor
            ``<smtpserver>``. Value problems go into ``findings``.
    """
    return read_listeners(_Listener, path, FILE, host, findings)


class _Listener(ListenerReader):
    """Reads one ``<smtpserver>``: the common options and SMTP's own (both layouts)."""

    protocol = Protocol.SMTP
    tag = "smtpserver"
    greeting_tag = "smtpGreeting"
    once = _ONCE
    known_by_lower = _KNOWN_BY_LOWER

    def defaults(self) -> None:
        self.auth = AuthReader(self.gate, self.host.resolve)  # replaced in before_options()
        self.old_layout = False
        self.bind_text: tuple[str, str] | None = None  # (text, path)
        self.port: int | None = None
        self.max_line_length = DEFAULT_MAX_LINE_LENGTH
        self.helo_ehlo = True
        self.brackets = True
        self.disabled: list[str] = []
        self.core_handlers = "CoreCmdHandlerLoader"

    def options(self) -> list[tuple[str, ET.Element]]:
        """(path, element) for each option, in document order, ``<handler>`` flattened."""
        options = []
        for child in self.element:
            if child.tag == "handler":
                for inner in child:
                    options.append((f"{self.prefix}/<handler>/<{inner.tag}>", inner))
            else:
                options.append((f"{self.prefix}/<{child.tag}>", child))
        return options

    def note_inner_attributes(self) -> None:
        for child in self.element.findall("handler"):
            note_attributes(child, f"{self.prefix}/<handler>", self.findings)

    def before_options(self, options: list[tuple[str, ET.Element]]) -> None:
        self.old_layout = any(element.tag == "port" for _, element in options)
        self.auth = AuthReader(self.gate, self.host.resolve)

    def option(self, tag: str, element: ET.Element, path: str) -> bool:
        if tag in AUTH_ELEMENTS or tag.startswith("auth."):
            self.auth.read(tag, element, path)
        elif tag in _SECURITY:
            _SECURITY[tag](self.gate, element, path)
        elif tag == "handlerchain":
            chain = read_handlerchain(element, path, self.findings)
            self.handlers, self.core_handlers = chain.handlers, chain.core
        elif tag in _VALUES - COMMON_OPTIONS:
            self.value(tag, element, path)
        else:
            return super().option(tag, element, path)
        return True

    def apply(self, tag: str, text: str, path: str) -> None:
        if tag == "bind":
            self.bind_text = (text, path)
        elif tag == "port":
            self.port = parse_int(text, 0, 65535)
        elif tag == "connectiontimeout" and self.old_layout:
            # Milliseconds in James 2.x (seconds in James 3, read by the base class).
            try:
                self.timeout = parse_int(text, low=1000) / 1000
            except Invalid as exc:
                raise Invalid(f"{exc} (milliseconds: <port> marks the James 2.x layout)") from None
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
        else:
            super().apply(tag, text, path)

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

    def build(self) -> ListenerConfig:
        return dataclasses.replace(
            super().build(),
            binds=self._binds(),
            max_line_length=self.max_line_length,
            helo_ehlo_enforcement=self.helo_ehlo,
            address_brackets_enforcement=self.brackets,
            disabled_features=frozenset(self.disabled),
            auth_required=self.auth.required,
            auth=self.auth.build(command=self.core_handlers != "NoAuthCmdHandlerLoader"),
            core_handlers=self.core_handlers,
        )
