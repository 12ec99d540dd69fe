"""Reading one XML configuration file safely, and small helpers over its elements."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NoReturn
from xml.parsers import expat

from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem

__all__ = ["MAX_FILE_SIZE", "element_text", "note_attributes", "read_xml"]

#: James's files are a few kilobytes; anything this large is not a configuration file.
MAX_FILE_SIZE = 4 * 1024 * 1024


class _Refused(Exception):
    def __init__(self, what: str, line: int) -> None:
        super().__init__(what)
        self.what = what
        self.line = line


def read_xml(path: Path, file: str) -> ET.Element:
    """Parse ``path`` and return its root element.

    The files belong to the administrator, so a hardened parser (defusedxml) is not
    needed against a hostile author. A DOCTYPE is refused all the same: James's files
    never use one, internal entities can expand exponentially ("billion laughs") and
    external ones would read other local files into the configuration. Expat is run
    once on its own with handlers that stop at the first DOCTYPE or entity declaration,
    because ElementTree's C parser offers no such hook; then ElementTree builds the tree.

    Raises:
        ConfigError: unreadable, too large, DOCTYPE present, or not well-formed (with the
            parser's line and column).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(Problem(file, "(file)", f"cannot read: {exc.strerror}")) from exc
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(
            Problem(file, "(file)", f"{len(data)} bytes is larger than {MAX_FILE_SIZE} bytes")
        )
    _refuse_doctype(data, file)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:  # pragma: no cover - expat above already refused it
        line, column = exc.position
        raise ConfigError(
            Problem(file, f"line {line}, column {column + 1}", f"malformed XML: {exc}")
        ) from exc


def _refuse_doctype(data: bytes, file: str) -> None:
    parser = expat.ParserCreate()

    def refuse(what: str) -> NoReturn:
        # Only the line: expat reports the column where the declaration ends.
        raise _Refused(what, parser.CurrentLineNumber)

    parser.StartDoctypeDeclHandler = lambda *_: refuse("DOCTYPE")
    parser.EntityDeclHandler = lambda *_: refuse("entity declaration")
    parser.UnparsedEntityDeclHandler = lambda *_: refuse("entity declaration")
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise ConfigError(
            Problem(
                file,
                f"line {exc.line}",
                f"a {exc.what} is not allowed (entities could expand without bound or "
                "read other files); remove it",
            )
        ) from None
    except expat.ExpatError as exc:
        raise ConfigError(
            Problem(
                file,
                f"line {exc.lineno}, column {exc.offset + 1}",
                f"malformed XML: {expat.ErrorString(exc.code)}",
            )
        ) from None


def element_text(element: ET.Element) -> str:
    """The element's text, stripped (as commons-configuration trims values).

    Raises:
        Invalid: the element has child elements where a plain value is expected.
    """
    if len(element):
        raise Invalid(f"expected a plain value, found <{element[0].tag}> inside")
    return (element.text or "").strip()


def note_attributes(
    element: ET.Element, path: str, findings: Findings, known: frozenset[str] = frozenset()
) -> None:
    """Name every attribute of ``element`` that is not in ``known`` as not implemented."""
    for name in element.attrib:
        if name not in known:
            findings.ignored(f"{path}/@{name}")
