"""Fail closed on security options kittiwake does not implement yet.

TLS, AUTH, trusted networks (``authorizedAddresses``), sender identity checks and the
PROXY protocol all change who may do what. Running without
them while the file asks for them would be a silent downgrade, so they stop the start
with a :class:`ConfigError` naming the element. The exception is a value that asks for
nothing beyond what kittiwake already does (TLS off, AUTH never announced and not
required, ``verifyIdentity`` false): such options are accepted and named in
``Config.unimplemented`` as harmless. ``<handlerchain>`` is read by ``_handlerchain.py``.

A listener with ``enabled="false"`` never runs, so its refusals are only named as not
implemented; its malformed values are still errors.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kittiwake.config._errors import Findings, Invalid
from kittiwake.config._values import parse_bool
from kittiwake.config._xml import element_text, note_attributes

__all__ = [
    "SECURITY_ELEMENTS",
    "Gate",
    "check_auth",
    "check_auth_required",
    "check_authorized_addresses",
    "check_dotted_auth",
    "check_proxy_required",
    "check_server_socket_type",
    "check_tls",
    "check_use_tls",
    "check_verify_identity",
    "read_auth",
]

_AUTH_CHILDREN = frozenset({"announce", "required", "requireSSL", "plainAuthEnabled"})
_ANNOUNCE = ("never", "always", "forunauthorizedaddresses")
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


def _bool_attribute(gate: Gate, element: ET.Element, name: str, path: str) -> bool:
    raw = element.get(name)
    return bool(_bool(gate, raw, f"{path}/@{name}")) if raw is not None else False


def check_tls(gate: Gate, element: ET.Element, path: str) -> None:
    """``<tls socketTLS=".." startTLS="..">``: only both false is accepted."""
    note_attributes(element, path, gate.findings, frozenset({"socketTLS", "startTLS"}))
    socket_tls = _bool_attribute(gate, element, "socketTLS", path)
    start_tls = _bool_attribute(gate, element, "startTLS", path)
    if socket_tls and start_tls:
        # James: "startTLS is only supported when using plain sockets".
        gate.bad_value(path, "socketTLS and startTLS cannot both be true")
    elif socket_tls or start_tls:
        which = "socketTLS" if socket_tls else "startTLS"
        gate.refuse(path, f'TLS is not implemented yet ({which}="true"); set it to false')
    else:
        gate.harmless(path, "TLS is off: socketTLS and startTLS are false")


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


def check_auth(gate: Gate, element: ET.Element, path: str) -> None:
    """:func:`read_auth`, for callers that only check."""
    read_auth(gate, element, path)


def read_auth(gate: Gate, element: ET.Element, path: str) -> bool:
    """``<auth>`` with nested ``<announce>``, ``<required>``, ``<requireSSL>``,
    ``<plainAuthEnabled>`` (James reads them as ``auth.announce`` and so on).

    Accepted only if AUTH is never announced: kittiwake has no AUTH yet. ``required``
    true is honoured as James's ``AuthRequiredHook`` is: MAIL is refused (530 5.7.0)
    unless the client authenticated, which, until AUTH exists, no client can.

    Returns:
        ``<required>`` (James ``auth.required``).
    """
    note_attributes(element, path, gate.findings)
    refused = False
    required = False
    for child in element:
        child_path = f"{path}/<{child.tag}>"
        if child.tag not in _AUTH_CHILDREN:
            gate.refuse(child_path, "AUTH is not implemented yet; remove it")
            refused = True
            continue
        text = _text(gate, child, child_path)
        if text is None:
            continue
        if child.tag == "announce":
            if text.lower() not in _ANNOUNCE:
                gate.bad_value(
                    child_path, f"{text!r} is not never, always or forUnauthorizedAddresses"
                )
            elif text.lower() != "never":
                gate.refuse(child_path, f"AUTH is not implemented yet ({text}); set it to never")
                refused = True
        elif _bool(gate, text, child_path) and child.tag == "required":
            required = True
    if not refused and not required:
        gate.harmless(path, "AUTH is never announced nor required")
    return required and not refused


def check_dotted_auth(gate: Gate, element: ET.Element, path: str) -> None:
    """``<auth.announce>`` and the like: James reads only the nested form, and these
    name AUTH settings kittiwake does not have, so they stop the start either way."""
    gate.refuse(
        path,
        "AUTH is not implemented yet (and James reads AUTH options nested, as "
        "<auth><announce>, not dotted); remove it",
    )


def check_auth_required(gate: Gate, element: ET.Element, path: str) -> None:
    """Deprecated ``<authRequired>``: ``true``, ``announce`` or ``false``."""
    text = _text(gate, element, path)
    if text is None:
        return
    lowered = text.lower()
    if lowered == "false":
        gate.harmless(path, "false: AUTH is not offered")
    elif lowered in ("true", "announce"):
        gate.refuse(path, f"AUTH is not implemented yet ({text}); set it to false")
    else:
        gate.bad_value(path, f"{text!r} is not true, false or announce")


def check_authorized_addresses(gate: Gate, element: ET.Element, path: str) -> None:
    """Any ``<authorizedAddresses>`` would let those networks relay; we cannot yet."""
    gate.refuse(
        path,
        "relaying for trusted networks is not implemented yet (kittiwake relays for no "
        "one); remove the element",
    )


def check_verify_identity(gate: Gate, element: ET.Element, path: str) -> None:
    """``<verifyIdentity>``: strict/true, relaxed, disabled/false (any case)."""
    text = _text(gate, element, path)
    if text is None:
        return
    lowered = text.lower()
    if lowered in ("false", "disabled"):
        gate.harmless(path, f"{text}: no sender identity check")
    elif lowered in ("true", "strict", "relaxed"):
        gate.refuse(
            path,
            f"sender identity verification is not implemented yet ({text}; with no AUTH "
            "no sender can be verified); set it to false",
        )
    else:
        gate.bad_value(path, f"{text!r} is not strict, relaxed, disabled, true or false")


def check_proxy_required(gate: Gate, element: ET.Element, path: str) -> None:
    """``<proxyRequired>``: the HAProxy PROXY protocol on every connection."""
    if _bool(gate, _text(gate, element, path), path):
        gate.refuse(path, "the PROXY protocol is not implemented yet; set it to false")
    else:
        gate.harmless(path, "false: no PROXY protocol")
