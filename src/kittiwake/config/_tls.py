"""``<tls>``: a listener's TLS, read as James's ``SslConfig.parse`` reads it.

``@startTLS="true"`` offers STARTTLS (RFC 3207), ``@socketTLS="true"`` is implicit TLS
(RFC 8314, port 465); both true is an error, as in James ("startTLS is only supported
when using plain sockets"); both false turns TLS off and nothing inside is read (as in
James). The children, when TLS is on:

* ``keystore`` (PKCS#12; a JKS file is refused with the keytool command to convert it),
  ``keystoreType`` (James's default JKS: a PKCS#12 file declared JKS is read, as Java does),
  ``secret``;
* or ``privateKey`` + ``certificates`` (PEM; ``secret`` decrypts the key). James uses the
  keystore when both are given;
* ``supportedProtocols/protocol`` (TLSv1.2, TLSv1.3), ``supportedCipherSuites/cipherSuite``
  (IANA names, mapped to OpenSSL's; see ``kittiwake.tls._ciphers``);
* ``clientAuth`` (``truststore``, ``truststoreType``, ``truststoreSecret``): its presence
  means every client must present a certificate the truststore trusts (James
  ``ClientAuth.NEED``).

Paths follow James's file system: ``file://conf/x`` is ``<conf dir>/x``, ``file:///x`` is
``/x``, ``file://x`` is ``<conf dir>/../x`` (James's home); a plain relative path is taken
relative to the configuration directory. The files themselves are read at start
(``kittiwake.tls.build_context``), so that ``config check`` and every management command
work without access to the private key.
"""

from __future__ import annotations

import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

from kittiwake.config._errors import Findings, Invalid
from kittiwake.config._values import parse_bool
from kittiwake.config._xml import element_text, note_attributes
from kittiwake.config.model import TlsConfig
from kittiwake.tls._context import TlsError, tls_parameters

__all__ = ["read_listener_tls", "read_tls", "resolve_path"]

_TEXT = ("keystore", "keystoreType", "privateKey", "certificates", "secret")
_TRUST = ("truststore", "truststoreType", "truststoreSecret")
_NOT_READ_BY_JAMES = ("provider", "algorithm")


def resolve_path(text: str, conf_dir: Path) -> str:
    """A path as James's ``FileSystem`` resolves it, relative to ``conf_dir``.

    Raises:
        Invalid: ``classpath:`` (a Java notion) or an empty path.
    """
    if not text:
        raise Invalid("the path is empty")
    if text.startswith("classpath:"):
        raise Invalid("classpath: is Java's; give a file path")
    if text.startswith("file://"):
        rest = text[len("file://") :]
        if rest.startswith("/"):
            return rest
        if rest.startswith("conf/"):
            return str(conf_dir / rest[len("conf/") :])
        return str(conf_dir.parent / rest)
    path = Path(text)
    return str(path if path.is_absolute() else conf_dir / path)


class _Reader:
    def __init__(self, path: str, findings: Findings, conf_dir: Path) -> None:
        self.path = path
        self.findings = findings
        self.conf_dir = conf_dir
        self.ok = True

    def error(self, path: str, reason: str) -> None:
        self.findings.error(path, reason)
        self.ok = False

    def text(self, element: ET.Element, path: str) -> str | None:
        note_attributes(element, path, self.findings)
        try:
            return element_text(element)
        except Invalid as exc:
            self.error(path, str(exc))
            return None

    def file(self, element: ET.Element, path: str) -> str | None:
        text = self.text(element, path)
        if text is None:
            return None
        try:
            return resolve_path(text, self.conf_dir)
        except Invalid as exc:
            self.error(path, str(exc))
            return None

    def bool_attribute(self, element: ET.Element, name: str) -> bool:
        raw = element.get(name)
        if raw is None:
            return False
        try:
            return parse_bool(raw)
        except Invalid as exc:
            self.error(f"{self.path}/@{name}", str(exc))
            return False

    def values(self, element: ET.Element, path: str, child_tag: str) -> tuple[str, ...]:
        """``<supportedProtocols><protocol>a</protocol>...`` as ("a", ...)."""
        note_attributes(element, path, self.findings)
        out = []
        for child in element:
            child_path = f"{path}/<{child.tag}>"
            if child.tag != child_tag:
                self.findings.ignored(child_path)
                continue
            text = self.text(child, child_path)
            if text:
                out.append(text)
        return tuple(out)


def read_listener_tls(
    element: ET.Element, path: str, findings: Findings, conf_dir: Path, enabled: bool
) -> TlsConfig | None:
    """:func:`read_tls` for an enabled listener; a disabled one (never started, and not
    read by James either) gets its ``<tls>`` named only."""
    if enabled:
        return read_tls(element, path, findings, conf_dir)
    findings.ignored(path, "not read: the listener is disabled")
    return None


def read_tls(
    element: ET.Element, path: str, findings: Findings, conf_dir: Path
) -> TlsConfig | None:
    """The listener's TLS, or None when both ``startTLS`` and ``socketTLS`` are false.

    Problems go into ``findings`` (errors stop the start; options read but not acted on
    are named).
    """
    r = _Reader(path, findings, conf_dir)
    note_attributes(element, path, findings, frozenset({"socketTLS", "startTLS"}))
    socket_tls = r.bool_attribute(element, "socketTLS")
    start_tls = r.bool_attribute(element, "startTLS")
    if socket_tls and start_tls:
        r.error(
            path,
            "socketTLS and startTLS cannot both be true (James: startTLS is only supported "
            "when using plain sockets); socketTLS is implicit TLS, startTLS offers STARTTLS",
        )
        return None
    if not (socket_tls or start_tls):
        if r.ok:
            findings.ignored(path, "TLS is off: socketTLS and startTLS are false")
        return None
    values: dict[str, str | None] = {}
    protocols: tuple[str, ...] = ()
    ciphers: tuple[str, ...] = ()
    client_auth = False
    trust: dict[str, str | None] = {}
    seen: set[str] = set()
    for child in element:
        tag, child_path = child.tag, f"{path}/<{child.tag}>"
        if tag in seen and tag in (*_TEXT, "supportedProtocols", "supportedCipherSuites"):
            r.error(child_path, "given more than once (James would use only the first)")
            continue
        seen.add(tag)
        if tag in ("keystore", "privateKey", "certificates"):
            values[tag] = r.file(child, child_path)
        elif tag in _TEXT:
            values[tag] = r.text(child, child_path)
        elif tag == "supportedProtocols":
            protocols = r.values(child, child_path, "protocol")
        elif tag == "supportedCipherSuites":
            ciphers = r.values(child, child_path, "cipherSuite")
        elif tag == "clientAuth":
            client_auth = True
            note_attributes(child, child_path, findings)
            for item in child:
                item_path = f"{child_path}/<{item.tag}>"
                if item.tag == "truststore":
                    trust[item.tag] = r.file(item, item_path)
                elif item.tag in _TRUST:
                    trust[item.tag] = r.text(item, item_path)
                else:
                    findings.ignored(item_path)
        elif tag == "enableOCSPCRLChecks":
            text = r.text(child, child_path)
            try:
                on = parse_bool(text) if text is not None else False
            except Invalid as exc:
                r.error(child_path, str(exc))
                on = False
            if on:
                r.error(
                    child_path,
                    "revocation checks of client certificates are not implemented yet; "
                    "set it to false",
                )
        elif tag == "sessionCache":
            findings.ignored(child_path, "OpenSSL's session cache defaults are used")
        elif tag in _NOT_READ_BY_JAMES:
            findings.ignored(child_path, "James does not read it either")
        else:
            findings.ignored(child_path)
    cfg = TlsConfig(
        starttls=start_tls,
        keystore=values.get("keystore"),
        keystore_type=values.get("keystoreType") or "JKS",
        private_key=values.get("privateKey"),
        certificates=values.get("certificates"),
        secret=values.get("secret") or None,
        protocols=protocols,
        cipher_suites=ciphers,
        client_auth=client_auth,
        truststore=trust.get("truststore"),
        truststore_type=trust.get("truststoreType") or "JKS",
        truststore_secret=trust.get("truststoreSecret") or None,
    )
    _check(r, cfg, path)
    return cfg if r.ok else None


def _check(r: _Reader, cfg: TlsConfig, path: str) -> None:
    if cfg.keystore is None:
        if r.ok and not (cfg.private_key and cfg.certificates):
            r.error(
                path,
                "keystore or (privateKey and certificates) needs to be configured "
                "(kittiwake cert selfsigned makes a pair for a first run)",
            )
    elif cfg.private_key or cfg.certificates:
        r.findings.ignored(
            f"{path}/<privateKey>" if cfg.private_key else f"{path}/<certificates>",
            "the keystore is used (as James does when both are given)",
        )
    if cfg.client_auth and not cfg.truststore:
        r.error(f"{path}/<clientAuth>", "clientAuth needs a <truststore> of trusted CAs")
    try:
        _, high, choice = tls_parameters(cfg.protocols, cfg.cipher_suites)
    except TlsError as exc:
        r.error(f"{path}/<{exc.element}>", exc.reason)
        return
    if choice.tls13 and choice.tls12 and high >= ssl.TLSVersion.TLSv1_3:
        r.findings.ignored(
            f"{path}/<supportedCipherSuites>",
            "TLS 1.3 suites cannot be restricted one by one; OpenSSL's TLS 1.3 suites are used",
        )
