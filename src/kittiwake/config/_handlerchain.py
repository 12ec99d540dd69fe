"""``<handlerchain>``: the handlers of one listener, read into :class:`HandlerConfig`.

Only the structure is read here: each ``<handler class="...">`` in order, with its
nested configuration kept as an :class:`OptionNode` tree. Which classes exist and what
their options mean is decided when the chain is built (``kittiwake.hooks.loader``), so
that an unknown class or a bad option stops the start with file, element and reason.

James loads the configured handlers first, then the core package
(``coreHandlersPackage``, default ``CoreCmdHandlerLoader``). Kittiwake's core is built
in; the two James core loaders are accepted and any other package is refused.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from kittiwake.config._errors import Findings, Invalid
from kittiwake.config._values import parse_bool
from kittiwake.config.model import HandlerConfig, OptionNode

__all__ = ["CORE_LOADERS", "HandlerChain", "handler_elements", "read_handlerchain"]

_SMTP = "org.apache.james.smtpserver."
#: coreHandlersPackage values: the core with AUTH, and the port-25 core without it.
CORE_LOADERS = {
    _SMTP + "CoreCmdHandlerLoader": "CoreCmdHandlerLoader",
    _SMTP + "NoAuthCmdHandlerLoader": "NoAuthCmdHandlerLoader",
    "CoreCmdHandlerLoader": "CoreCmdHandlerLoader",
    "NoAuthCmdHandlerLoader": "NoAuthCmdHandlerLoader",
}
_JMX_LOADERS = frozenset({_SMTP + "jmx.JMXHandlersLoader"})


@dataclass(frozen=True, slots=True)
class HandlerChain:
    handlers: tuple[HandlerConfig, ...]
    core: str


def option_node(element: ET.Element) -> OptionNode:
    """The element and everything under it, comments dropped, text stripped."""
    return OptionNode(
        tag=element.tag,
        text=(element.text or "").strip(),
        attributes=tuple(element.attrib.items()),
        children=tuple(option_node(child) for child in element if isinstance(child.tag, str)),
    )


def handler_elements(
    element: ET.Element, path: str, findings: Findings
) -> Iterator[tuple[str, ET.Element, str]]:
    """(class, element, path) of each ``<handler>`` of a chain, in order; anything else
    in the chain is named as ignored."""
    for child in element:
        if not isinstance(child.tag, str):
            continue  # a comment
        if child.tag != "handler":
            findings.ignored(f"{path}/<{child.tag}>", "not a <handler>")
            continue
        cls = child.get("class", "").strip()
        yield cls, child, f'{path}/<handler class="{cls}">'


def read_handlerchain(element: ET.Element, path: str, findings: Findings) -> HandlerChain:
    """Read one ``<handlerchain>``; problems go into ``findings``.

    Args:
        element: the ``<handlerchain>`` element.
        path: its path for messages, e.g. ``<smtpserver name="smtp">/<handlerchain>``.
        findings: where problems and ignored parts are recorded.
    """
    core = "CoreCmdHandlerLoader"
    for name, raw in element.attrib.items():
        value = raw.strip()
        attr_path = f"{path}/@{name}"
        if name == "coreHandlersPackage":
            if value in CORE_LOADERS:
                core = CORE_LOADERS[value]
            else:
                findings.error(
                    attr_path,
                    f"{value!r} is not a core kittiwake has: kittiwake's core handlers are "
                    "built in; use org.apache.james.smtpserver.CoreCmdHandlerLoader or "
                    "NoAuthCmdHandlerLoader, and add handlers with <handler class=...>",
                )
        elif name == "jmxHandlersPackage":
            if value not in _JMX_LOADERS:
                findings.error(attr_path, f"{value!r} is not a JMX loader kittiwake knows")
            else:
                findings.ignored(attr_path, "JMX is not implemented")
        elif name == "enableJmx":
            try:
                if parse_bool(value):
                    findings.ignored(attr_path, "JMX is not implemented")
            except Invalid as exc:
                findings.error(attr_path, str(exc))
        else:
            findings.ignored(attr_path, "unknown attribute")
    handlers: list[HandlerConfig] = []
    for cls, child, child_path in handler_elements(element, path, findings):
        if not cls:
            findings.error(child_path, "the class attribute is missing or empty")
            continue
        handlers.append(HandlerConfig(cls, option_node(child), child_path, findings.file))
    return HandlerChain(tuple(handlers), core)
