"""``domainlist.xml`` and ``mailetcontainer.xml``'s ``<context><postmaster>``.

``domainlist.xml`` is read as James's ``AbstractDomainList`` and
``DomainListConfiguration`` read it (code, not docs):

* ``<domainnames><domainname>``: the local domains; empty entries are skipped.
* ``<defaultDomain>``: appended to domain-less addresses; ``localhost`` when absent. It
  is always a local domain: James creates it in the domain list if it is missing.
* ``<autodetect>``: adds this machine's name (``socket.getfqdn()``, lower-cased), but
  never ``localhost`` itself, exactly as James skips a host name equal to ``localhost``.
  Absent means **true** in James's code (its docs say false); we follow the code.
* ``<autodetectIP>``: James adds every IP of every local domain, for address literals
  (``user@[192.0.2.1]``). Also true when absent. Kittiwake does not treat address
  literals as local yet, so a true value is named in ``Config.unimplemented``; the
  refusal that results (such mail is not local) fails closed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._values import HostLookup, parse_bool
from kittiwake.config._xml import element_text, note_attributes, read_xml
from kittiwake.config.model import DomainListConfig
from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain

__all__ = ["DOMAINLIST", "MAILETCONTAINER", "PROCESSORS_NOTE", "read_domainlist", "read_postmaster"]

DOMAINLIST = "domainlist.xml"
MAILETCONTAINER = "mailetcontainer.xml"
PROCESSORS_NOTE = (
    "mailetcontainer.xml: processors (the mailet container is not implemented yet; "
    "the built-in spool-to-Maildir flow is used)"
)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def checked_domain(text: str) -> str:
    """The canonical (lower-case A-label) form of a domain from the configuration.

    Raises:
        Invalid: not a host name of LDH labels (after IDNA), or it ends with a dot.
    """
    if text.endswith("."):
        raise Invalid(f"{text!r} ends with a dot; write it without")
    try:
        domain = canonical_domain(text)
    except InvalidName:
        raise Invalid(f"{text!r} is not a valid domain name") from None
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise Invalid(f"{text!r} is not a valid domain name")
    return domain


def _text(element: ET.Element, path: str, findings: Findings) -> str | None:
    try:
        return element_text(element)
    except Invalid as exc:
        findings.error(path, str(exc))
        return None


def read_domainlist(path: Path, host: HostLookup, findings: Findings) -> DomainListConfig:
    """Read ``domainlist.xml``; bad names go into ``findings``.

    Raises:
        ConfigError: not well-formed, or the root is not ``<domainlist>``.
    """
    root = read_xml(path, DOMAINLIST)
    if root.tag != "domainlist":
        raise ConfigError(Problem(DOMAINLIST, f"<{root.tag}>", "the root must be <domainlist>"))
    for name, value in root.attrib.items():
        note = "kittiwake keeps domains in its own store" if name == "class" else None
        findings.ignored(f'<domainlist {name}="{value}">', note)
    names: list[str] = []
    default_domain = "localhost"
    flags = {"autodetect": True, "autodetectIP": True}
    present: set[str] = set()
    for child in root:
        child_path = f"<{child.tag}>"
        if child.tag in present and child.tag != "domainnames":
            findings.error(child_path, "given more than once (James would use only the first)")
            continue
        present.add(child.tag)
        if child.tag == "domainnames":
            note_attributes(child, child_path, findings)
            _domain_names(child, names, findings)
            continue
        if child.tag not in ("defaultDomain", *flags):
            findings.ignored(child_path)
            continue
        note_attributes(child, child_path, findings)
        text = _text(child, child_path, findings)
        if text is None:
            continue
        try:
            if child.tag == "defaultDomain":
                default_domain = checked_domain(text)
            else:
                flags[child.tag] = parse_bool(text)
        except Invalid as exc:
            findings.error(child_path, str(exc))
    if default_domain not in names:
        names.append(default_domain)
    if flags["autodetect"]:
        _add_host_name(host, names, findings)
    if flags["autodetectIP"]:
        how = "true" if "autodetectIP" in present else "absent, and James's default is true"
        findings.ignored("<autodetectIP>", f"{how}: IP address literals are not local domains yet")
    return DomainListConfig(
        domain_names=tuple(names),
        default_domain=default_domain,
        autodetect=flags["autodetect"],
        autodetect_ip=flags["autodetectIP"],
    )


def _domain_names(element: ET.Element, names: list[str], findings: Findings) -> None:
    for entry in element:
        entry_path = f"<domainnames>/<{entry.tag}>"
        if entry.tag != "domainname":
            findings.ignored(entry_path)
            continue
        note_attributes(entry, entry_path, findings)
        text = _text(entry, entry_path, findings)
        if not text:
            continue  # James skips empty entries
        try:
            domain = checked_domain(text)
        except Invalid as exc:
            findings.error(entry_path, str(exc))
            continue
        if domain not in names:
            names.append(domain)


def _add_host_name(host: HostLookup, names: list[str], findings: Findings) -> None:
    try:
        hostname = host.fqdn().strip().lower()
    except OSError:
        hostname = "localhost"
    if not hostname or hostname == "localhost":
        return
    try:
        domain = checked_domain(hostname)
    except Invalid as exc:
        findings.ignored("<autodetect>", f"{exc}; the host name is not added")
        return
    if domain not in names:
        names.append(domain)


def read_postmaster(path: Path, default_domain: str, findings: Findings) -> str:
    """``<context><postmaster>``, with ``@<defaultDomain>`` appended when it has no domain
    (as James does), canonicalised; ``postmaster@<defaultDomain>`` when absent.

    Everything else in the file is named in ``findings`` as not implemented.

    Raises:
        ConfigError: not well-formed, or the root is not ``<mailetcontainer>``.
    """
    root = read_xml(path, MAILETCONTAINER)
    if root.tag != "mailetcontainer":
        raise ConfigError(
            Problem(MAILETCONTAINER, f"<{root.tag}>", "the root must be <mailetcontainer>")
        )
    note_attributes(root, "<mailetcontainer>", findings)
    address = "postmaster"
    element_path: str | None = None
    for child in root:
        if child.tag == "processors" or (
            child.tag == "spooler" and root.find("processors") is not None
        ):
            continue  # the mailet container reads them (kittiwake.mailet.config)
        elif child.tag != "context":
            findings.ignored(f"<{child.tag}>")
        else:
            for option in child:
                option_path = f"<context>/<{option.tag}>"
                if option.tag != "postmaster":
                    findings.ignored(option_path)
                elif element_path is not None:
                    findings.error(option_path, "given more than once")
                else:
                    element_path = option_path
                    address = _text(option, option_path, findings) or "postmaster"
    if "@" not in address:
        address = f"{address}@{default_domain}"
    try:
        if any(ch.isspace() or ch in "<>" for ch in address):
            raise InvalidName(address)
        checked_domain(address.rpartition("@")[2])
        return canonical_address(address)
    except (InvalidName, Invalid):
        findings.error(element_path or "<context>/<postmaster>", f"{address!r} is not an address")
        return f"postmaster@{default_domain}"
