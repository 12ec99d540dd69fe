"""A listener's AUTH and relay options: ``<auth>``, ``<authRequired>``,
``<authorizedAddresses>``, ``<verifyIdentity>`` (James ``SMTPServer.doConfigure``).

* ``<auth>``: ``<announce>`` never / always / forUnauthorizedAddresses (any case),
  ``<required>``, ``<requireSSL>`` (kittiwake's default **true**; James's code: false),
  ``<plainAuthEnabled>``, and kittiwake's ``<ipFailureLimit>`` (10) and
  ``<ipFailureWindow>`` (seconds, 600). ``<saslMechanisms>`` may name only the PLAIN and
  LOGIN factories; ``<oidc>`` and ``<gssapi>`` (mechanisms kittiwake lacks) stop the
  start, as they would leave their users unable to log in.
* ``<authRequired>`` (deprecated): read only when ``<auth><announce>`` is absent;
  true -> forUnauthorizedAddresses, announce -> always, false -> never.
* ``<authorizedAddresses>``: trusted networks, every James syntax
  (:mod:`kittiwake.policy.networks`); host names are resolved once, at start.
* ``<verifyIdentity>``: strict / true, relaxed, disabled / false (absent: strict).

James reads the options nested (``auth/announce``); a dotted ``<auth.announce>``
element means nothing to James, so it is refused rather than half-obeyed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from kittiwake.config._errors import Invalid
from kittiwake.config._security import Gate
from kittiwake.config._values import parse_bool, parse_int
from kittiwake.config._xml import element_text, note_attributes
from kittiwake.config.model import AuthAnnounce, AuthConfig
from kittiwake.policy.identity import parse_identity_mode
from kittiwake.policy.networks import InvalidNetwork, Network, parse_networks

__all__ = ["AUTH_ELEMENTS", "AuthReader"]

#: the ``<smtpserver>`` children this module reads
AUTH_ELEMENTS = frozenset({"auth", "authRequired", "authorizedAddresses", "verifyIdentity"})
_ANNOUNCE = {a.value.lower(): a for a in AuthAnnounce}
_LEGACY = {
    "true": AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES,
    "announce": AuthAnnounce.ALWAYS,
    "false": AuthAnnounce.NEVER,
}
_SASL_FACTORIES = frozenset(
    {
        "PlainSaslMechanismFactory",
        "org.apache.james.protocols.sasl.plain.PlainSaslMechanismFactory",
        "LoginSaslMechanismFactory",
        "org.apache.james.protocols.sasl.login.LoginSaslMechanismFactory",
    }
)


class AuthReader:
    """Collects one listener's AUTH options; :meth:`build` gives the result."""

    def __init__(self, gate: Gate, resolve: Callable[[str], tuple[str, ...]]) -> None:
        self.gate = gate
        self.resolve = resolve
        self.announce: AuthAnnounce | None = None
        self.legacy: AuthAnnounce | None = None
        self.require_ssl = True
        self.plain = True
        self.required = False
        self.networks: tuple[Network, ...] = ()
        self.identity = "strict"
        self.ip_failure_limit = 10
        self.ip_failure_window = 600.0

    def read(self, tag: str, element: ET.Element, path: str) -> None:
        """One ``<smtpserver>`` child named in :data:`AUTH_ELEMENTS`, or ``auth.*``."""
        if tag.startswith("auth."):
            self.gate.bad_value(
                path,
                f"James reads AUTH options nested (<auth><{tag[5:]}>), not dotted; "
                "move it into <auth>",
            )
            return
        note_attributes(element, path, self.gate.findings)
        if tag == "auth":
            self._auth(element, path)
            return
        text = self._text(element, path)
        if text is None:
            return
        try:
            if tag == "authRequired":
                try:
                    self.legacy = _LEGACY[text.lower()]
                except KeyError:
                    raise Invalid(f"{text!r} is not true, false or announce") from None
            elif tag == "authorizedAddresses":
                try:
                    self.networks = parse_networks(text, self.resolve)
                except InvalidNetwork as exc:
                    raise Invalid(str(exc)) from None
            elif tag == "verifyIdentity":
                try:
                    self.identity = parse_identity_mode(text).value
                except ValueError as exc:
                    raise Invalid(str(exc)) from None
        except Invalid as exc:
            self.gate.bad_value(path, str(exc))

    def _text(self, element: ET.Element, path: str) -> str | None:
        try:
            return element_text(element)
        except Invalid as exc:
            self.gate.bad_value(path, str(exc))
            return None

    def _auth(self, element: ET.Element, path: str) -> None:
        for child in element:
            child_path = f"{path}/<{child.tag}>"
            if child.tag in ("oidc", "gssapi"):
                self.gate.refuse(
                    child_path,
                    f"the mechanisms of <{child.tag}> are not implemented (kittiwake has "
                    "PLAIN and LOGIN); remove it",
                )
                continue
            text = self._text(child, child_path)
            if text is None:
                continue
            note_attributes(child, child_path, self.gate.findings)
            try:
                self._auth_option(child.tag, text, child_path)
            except Invalid as exc:
                self.gate.bad_value(child_path, str(exc))

    def _auth_option(self, tag: str, text: str, path: str) -> None:
        if tag == "announce":
            try:
                self.announce = _ANNOUNCE[text.lower()]
            except KeyError:
                raise Invalid(
                    f"{text!r} is not never, always or forUnauthorizedAddresses"
                ) from None
        elif tag == "required":
            self.required = parse_bool(text)
        elif tag == "requireSSL":
            self.require_ssl = parse_bool(text)
        elif tag == "plainAuthEnabled":
            self.plain = parse_bool(text)
        elif tag == "ipFailureLimit":
            self.ip_failure_limit = parse_int(text, low=0)
        elif tag == "ipFailureWindow":
            self.ip_failure_window = float(parse_int(text, low=1))
        elif tag == "saslMechanisms":
            names = [n.strip() for n in text.split(",") if n.strip()]
            if not names:
                raise Invalid("empty: name the mechanism factories, or leave it out")
            unknown = [n for n in names if n not in _SASL_FACTORIES]
            if unknown:
                raise Invalid(f"{', '.join(unknown)}: kittiwake has only PLAIN and LOGIN")
            self.plain = self.plain and bool(names)
        else:
            self.gate.findings.ignored(path)

    def build(self, *, command: bool = True) -> AuthConfig:
        """The listener's :class:`AuthConfig`.

        Args:
            command: the listener has the AUTH command (not NoAuthCmdHandlerLoader).
        """
        announce = self.announce or self.legacy or AuthAnnounce.NEVER
        return AuthConfig(
            announce=announce,
            require_ssl=self.require_ssl,
            plain_enabled=self.plain,
            trusted_networks=self.networks,
            verify_identity=self.identity,
            command=command,
            ip_failure_limit=self.ip_failure_limit,
            ip_failure_window=self.ip_failure_window,
        )
