"""Fail closed on security options kittiwake does not implement yet.

The PROXY protocol and James 2.x TLS settings change who may do what. Running without
them while the file asks for them would be a silent downgrade, so they stop the start
with a :class:`ConfigError` naming the element. The exception is a value that asks for
nothing beyond what kittiwake already does (``proxyRequired`` false, plain sockets):
such options are accepted and named in ``Config.unimplemented`` as harmless.
``<tls>`` is read by ``_tls.py``, ``<handlerchain>`` by ``_handlerchain.py``, and AUTH,
``authorizedAddresses`` and ``verifyIdentity`` by ``_auth.py``.

A listener with ``enabled="false"`` never runs, so its refusals are only named as not
implemented; its malformed values are still errors.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kittiwake.config._errors import Findings, Invalid
from kittiwake.config._values import parse_bool
from kittiwake.config._xml import element_text

__all__ = [
    "SECURITY_ELEMENTS",
    "Gate",
    "check_proxy_required",
    "check_server_socket_type",
    "check_use_tls",
]

_JAMES3_TLS = 'use James 3\'s <tls socketTLS="true"> or <tls startTLS="true"> with a certificate'

#: Element names this module decides on (used to catch mis-cased spellings).
SECURITY_ELEMENTS = frozenset(
    {"tls", "auth", "authRequired", "authorizedAddresses", "verifyIdentity"}
    | {"proxyRequired", "useTLS", "serverSocketType"}
)


@dataclass(frozen=True, slots=True)
class Gate:
    """Where a listener's security decisions go."""

    findings: Findings
    enabled: bool

    def refuse(self, path: str, reason: str) -> None:
        """Stop the start, unless the listener is disabled and so never runs."""
        if self.enabled:
            self.findings.error(path, reason)
        else:
            self.findings.ignored(path, f"{reason.split(';')[0]}; the listener is disabled")

    def harmless(self, path: str, note: str) -> None:
        self.findings.ignored(path, note)

    def bad_value(self, path: str, reason: str) -> None:
        self.findings.error(path, reason)


def _text(gate: Gate, element: ET.Element, path: str) -> str | None:
    try:
        return element_text(element)
    except Invalid as exc:
        gate.bad_value(path, str(exc))
        return None


def _bool(gate: Gate, text: str | None, path: str) -> bool | None:
    if text is None:
        return None
    try:
        return parse_bool(text)
    except Invalid as exc:
        gate.bad_value(path, str(exc))
        return None


def check_use_tls(gate: Gate, element: ET.Element, path: str) -> None:
    """James 2.x ``<useTLS>``: implicit TLS on the port."""
    if _bool(gate, _text(gate, element, path), path):
        gate.refuse(path, f"James 2.x TLS settings are not read; {_JAMES3_TLS}")
    else:
        gate.harmless(path, "false: TLS is off")


def check_server_socket_type(gate: Gate, element: ET.Element, path: str) -> None:
    """James 2.x ``<serverSocketType>``: ``plain`` or ``ssl``."""
    text = _text(gate, element, path)
    if text is not None and text.lower() == "plain":
        gate.harmless(path, "plain sockets")
    elif text is not None:
        gate.refuse(
            path, f"James 2.x TLS settings are not read (socket type {text!r}); {_JAMES3_TLS}"
        )


def check_proxy_required(gate: Gate, element: ET.Element, path: str) -> None:
    """``<proxyRequired>``: the HAProxy PROXY protocol on every connection."""
    if _bool(gate, _text(gate, element, path), path):
        gate.refuse(path, "the PROXY protocol is not implemented yet; set it to false")
    else:
        gate.harmless(path, "false: no PROXY protocol")
