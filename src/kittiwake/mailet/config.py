"""``mailetcontainer.xml`` as James reads it, into frozen specs (no classes loaded yet).

Read: ``<spooler>`` (``threads``, ``errorRepository``), ``<processors>`` with their
``<processor state="...">``, each an ordered list of ``<mailet match="Matcher=cond"
class="Mailet">`` (or ``notmatch=``) whose child elements are the mailet's parameters,
and named ``<matcher name="..." match="...">`` definitions, composite ones (``And``,
``Or``, ``Not``, James's ``org.apache.james.mailetcontainer.impl.matchers.*``) holding
child ``<matcher match=...>`` elements. ``onMailetException`` and ``onMatchException``
are read as attributes or as child elements (James's samples use both).
``<context>`` is read by the configuration loader (the postmaster). Attributes James
uses for JMX (``enableJmx``) are ignored without a note: they change nothing here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from kittiwake.config._errors import ConfigError, Findings, Problem
from kittiwake.config._xml import read_xml

__all__ = [
    "FILE",
    "ContainerSpec",
    "MailetSpec",
    "MatcherSpec",
    "ProcessorSpec",
    "parse_mailetcontainer",
    "parse_mailetcontainer_text",
]

FILE = "mailetcontainer.xml"
_EXCEPTION_PARAMS = ("onMailetException", "onMatchException")
_QUIET_ATTRIBUTES = frozenset({"enableJmx"})


@dataclass(frozen=True, slots=True)
class MatcherSpec:
    """``Name=condition``, or a composite with children."""

    name: str
    condition: str | None = None
    children: tuple[MatcherSpec, ...] = ()
    #: from ``notmatch=``: the complement
    negate: bool = False


@dataclass(frozen=True, slots=True)
class MailetSpec:
    class_name: str
    matcher: MatcherSpec
    params: tuple[tuple[str, str], ...] = ()
    #: processor name, "ignore", "propagate" (default: "error")
    on_mailet_exception: str = "error"
    #: processor name, "matchall", "nomatch" (default: "error")
    on_match_exception: str = "error"
    #: where it is, for messages: ``<processor state="x">/<mailet #3 class="Y">``
    path: str = ""


@dataclass(frozen=True, slots=True)
class ProcessorSpec:
    state: str
    mailets: tuple[MailetSpec, ...]
    #: named matchers defined in this processor
    matchers: tuple[tuple[str, MatcherSpec], ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    processors: tuple[ProcessorSpec, ...]
    #: ``<spooler><threads>``: kittiwake's delivery runs in the spool runner's threads
    threads: int = 20
    #: ``<spooler><errorRepository>``: where a mail that failed 5 times goes
    error_repository: str = "file://var/mail/error/"
    #: options read but not used (named at start)
    notes: tuple[str, ...] = field(default=())

    def processor(self, state: str) -> ProcessorSpec | None:
        for p in self.processors:
            if p.state == state:
                return p
        return None


def parse_mailetcontainer(path: Path, file: str = FILE) -> ContainerSpec:
    """Read ``path``.

    Raises:
        ConfigError: malformed XML, or a processor or mailet that cannot be used, each
            with file, element and reason.
    """
    return _parse(read_xml(path, file), file)


def parse_mailetcontainer_text(text: str, file: str = FILE) -> ContainerSpec:
    """Read a ``mailetcontainer.xml`` held in a string (the built-in default).

    Raises:
        ConfigError: as :func:`parse_mailetcontainer`.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(Problem(file, "(file)", f"malformed XML: {exc}")) from None
    return _parse(root, file)


def _parse(root: ET.Element, file: str) -> ContainerSpec:
    findings = Findings(file)
    if root.tag != "mailetcontainer":
        raise ConfigError(Problem(file, f"<{root.tag}>", "the root must be <mailetcontainer>"))
    threads = 20
    error_repository = "file://var/mail/error/"
    processors: list[ProcessorSpec] = []
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comments
        if child.tag == "spooler":
            for opt in child:
                if not isinstance(opt.tag, str):
                    continue
                text = (opt.text or "").strip()
                if opt.tag == "threads":
                    try:
                        threads = int(text)
                        if threads < 0:
                            raise ValueError
                    except ValueError:
                        findings.error("<spooler>/<threads>", f"{text!r} is not a count")
                elif opt.tag == "errorRepository":
                    error_repository = text or error_repository
                else:
                    findings.ignored(f"<spooler>/<{opt.tag}>")
        elif child.tag == "processors":
            for proc in child:
                if not isinstance(proc.tag, str):
                    continue
                if proc.tag != "processor":
                    findings.ignored(f"<processors>/<{proc.tag}>")
                    continue
                spec = _processor(proc, findings)
                if spec is None:
                    continue
                if any(p.state == spec.state for p in processors):
                    findings.error(f'<processor state="{spec.state}">', "defined twice")
                processors.append(spec)
        elif child.tag != "context":
            findings.ignored(f"<{child.tag}>")
    states = {p.state for p in processors}
    if processors and "root" not in states:
        findings.error("<processors>", 'there is no <processor state="root">')
    if processors and "error" not in states:
        findings.error("<processors>", 'there is no <processor state="error">')
    if findings.problems:
        raise ConfigError(findings.problems)
    return ContainerSpec(
        tuple(processors), threads, error_repository, notes=tuple(findings.unimplemented)
    )


def _processor(element: ET.Element, findings: Findings) -> ProcessorSpec | None:
    state = element.get("state") or element.get("name")
    if not state:
        findings.error("<processor>", "has no state= attribute")
        return None
    where = f'<processor state="{state}">'
    if state == "ghost":
        findings.error(where, '"ghost" is reserved: it means "processing is finished"')
    for name in element.attrib:
        if name not in ("state", "name", "class", *_QUIET_ATTRIBUTES):
            findings.ignored(f"{where}/@{name}")
    named: dict[str, MatcherSpec] = {}
    mailets: list[MailetSpec] = []
    for n, child in enumerate(element, 1):
        if not isinstance(child.tag, str):
            continue
        if child.tag == "matcher":
            name = child.get("name") or ""
            if not name:
                findings.error(f"{where}/<matcher>", "a top-level <matcher> needs name=")
                continue
            spec = _matcher_element(child, f"{where}/<matcher name={name!r}>", findings)
            if spec is not None:
                named[name] = spec
        elif child.tag == "mailet":
            mailet = _mailet(child, f"{where}/<mailet #{n}>", named, findings)
            if mailet is not None:
                mailets.append(mailet)
        else:
            findings.ignored(f"{where}/<{child.tag}>")
    return ProcessorSpec(state, tuple(mailets), tuple(named.items()))


def _matcher_element(element: ET.Element, where: str, findings: Findings) -> MatcherSpec | None:
    match, notmatch = element.get("match"), element.get("notmatch")
    if (match is None) == (notmatch is None):
        findings.error(where, "needs exactly one of match= and notmatch=")
        return None
    text = match if match is not None else notmatch
    assert text is not None
    spec = parse_match(text)
    children = []
    for i, child in enumerate(element, 1):
        if isinstance(child.tag, str) and child.tag == "matcher":
            sub = _matcher_element(child, f"{where}/<matcher #{i}>", findings)
            if sub is not None:
                children.append(sub)
    return MatcherSpec(spec.name, spec.condition, tuple(children), negate=notmatch is not None)


def parse_match(text: str) -> MatcherSpec:
    """``"RelayLimit=30"`` -> ``MatcherSpec("RelayLimit", "30")``."""
    name, eq, condition = text.strip().partition("=")
    return MatcherSpec(name.strip(), condition.strip() if eq else None)


def _mailet(
    element: ET.Element, where: str, named: dict[str, MatcherSpec], findings: Findings
) -> MailetSpec | None:
    class_name = (element.get("class") or "").strip()
    if not class_name:
        findings.error(where, "has no class=")
        return None
    where = f'{where.rstrip(">")} class="{class_name}">'
    match, notmatch = element.get("match"), element.get("notmatch")
    if match is not None and notmatch is not None:
        findings.error(where, "has both match= and notmatch=")
        return None
    text = match if match is not None else notmatch
    spec = parse_match(text) if text is not None else MatcherSpec("All")
    if spec.condition is None and spec.name in named:
        spec = named[spec.name]
    if notmatch is not None:
        spec = MatcherSpec(spec.name, spec.condition, spec.children, negate=not spec.negate)
    exceptions = {k: element.get(k) for k in _EXCEPTION_PARAMS}
    params: list[tuple[str, str]] = []
    for child in element:
        if not isinstance(child.tag, str):
            continue
        value = "".join(child.itertext()).strip()
        if child.tag in _EXCEPTION_PARAMS:
            exceptions[child.tag] = value
        else:
            params.append((child.tag, value))
    for name in element.attrib:
        if name not in ("class", "match", "notmatch", *_EXCEPTION_PARAMS, *_QUIET_ATTRIBUTES):
            findings.ignored(f"{where}/@{name}")
    on_mailet = (exceptions["onMailetException"] or "error").strip()
    on_match = (exceptions["onMatchException"] or "error").strip()
    if on_match.lower() in ("nomatch", "matchall"):
        on_match = on_match.lower()
    if on_mailet.lower() in ("ignore", "propagate"):
        on_mailet = on_mailet.lower()
    return MailetSpec(class_name, spec, tuple(params), on_mailet, on_match, where)


def referenced_states(spec: ContainerSpec) -> list[tuple[str, str]]:
    """(where, processor name) for every processor a mailet sends mail to."""
    out = []
    for proc in spec.processors:
        for m in proc.mailets:
            for key, value in m.params:
                if key in ("processor", "errorProcessor", "bounceProcessor", "onSuccess"):
                    out.append((m.path, value))
            for value in (m.on_mailet_exception, m.on_match_exception):
                if value not in ("ignore", "propagate", "nomatch", "matchall"):
                    out.append((m.path, value))
    return out
