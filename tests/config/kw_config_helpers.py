"""Fakes shared by the configuration tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

import socket

FQDN = "mx.example.test"
RESOLVER = {
    "mail.example.test": ("192.0.2.10", "2001:db8::10"),
    "localhost": ("127.0.0.1", "::1"),
}
LISTENER = '<smtpserver name="t">'


def fake_resolve(name: str) -> tuple[str, ...]:
    try:
        return RESOLVER[name]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def wrap(body: str, attributes: str = "") -> str:
    """One James 3 listener named ``t`` on 127.0.0.1:2525 with ``body`` added."""
    return (
        f'<?xml version="1.0"?>\n<smtpservers><smtpserver{attributes}>'
        f"<jmxName>t</jmxName><bind>127.0.0.1:2525</bind>{body}</smtpserver></smtpservers>"
    )
