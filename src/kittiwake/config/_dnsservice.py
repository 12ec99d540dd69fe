"""``dnsservice.xml``: the resolvers the handlers ask (RBL, SPF, HELO and sender checks).

James's file::

    <dnsservice>
      <servers><server>8.8.8.8</server><server>1.1.1.1</server></servers>
      <autodiscover>true</autodiscover>
      <authoritative>false</authoritative>
      <maxcachesize>50000</maxcachesize>
    </dnsservice>

Read as James reads it: ``<autodiscover>`` (true when absent) adds the system's
resolvers to the listed ones; with no server and no autodiscovery, 127.0.0.1 is used.
Kittiwake extensions: a server may carry a port (``127.0.0.1:5353``, ``[::1]:5353``),
and ``<timeout>`` gives the seconds one lookup may take (5 when absent). James's
``<authoritative>``, ``<singleIPperMX>`` and ``<verbose>`` are named as not implemented.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path

from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._values import parse_bool, parse_int
from kittiwake.config._xml import element_text, note_attributes, read_xml
from kittiwake.config.model import Bind, DnsConfig

__all__ = ["DNSSERVICE", "parse_server", "read_dnsservice"]

DNSSERVICE = "dnsservice.xml"
_MAX_TIMEOUT = 120


def parse_server(text: str) -> Bind:
    """``IP``, ``IP:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` (port 53 when absent).

    Raises:
        Invalid: not an IP literal (James takes only addresses here), or a bad port.
    """
    entry = text.strip()
    port = 53
    host = entry
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise Invalid(f"{entry!r} is not [IPv6] or [IPv6]:port")
        host, rest = entry[1:close], entry[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise Invalid(f"{entry!r} is not [IPv6]:port")
            port = parse_int(rest[1:], 1, 65535)
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = parse_int(port_text, 1, 65535)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"{entry!r} is not an IP address (with an optional :port)") from None
    return Bind(str(address), port)


def read_dnsservice(path: Path, findings: Findings) -> DnsConfig:
    """Read ``dnsservice.xml``.

    Raises:
        ConfigError: not well-formed, or the root is not ``<dnsservice>``. Value problems
            go into ``findings``.
    """
    root = read_xml(path, DNSSERVICE)
    if root.tag != "dnsservice":
        raise ConfigError(Problem(DNSSERVICE, f"<{root.tag}>", "the root must be <dnsservice>"))
    note_attributes(root, "<dnsservice>", findings)
    servers: list[Bind] = []
    autodiscover = True
    timeout = 5.0
    cache = 50000
    for child in root:
        if not isinstance(child.tag, str):
            continue
        where = f"<dnsservice>/<{child.tag}>"
        note_attributes(child, where, findings)
        try:
            if child.tag == "servers":
                for server in child:
                    if not isinstance(server.tag, str):
                        continue
                    server_path = f"{where}/<{server.tag}>"
                    if server.tag != "server":
                        findings.ignored(server_path)
                        continue
                    try:
                        bind = parse_server(_text(server))
                    except Invalid as exc:
                        findings.error(server_path, str(exc))
                        continue
                    if bind not in servers:
                        servers.append(bind)
            elif child.tag == "autodiscover":
                autodiscover = parse_bool(_text(child))
            elif child.tag == "timeout":
                timeout = float(parse_int(_text(child), 1, _MAX_TIMEOUT))
            elif child.tag == "maxcachesize":
                cache = parse_int(_text(child), 0, 10_000_000)
            else:
                findings.ignored(where)
        except Invalid as exc:
            findings.error(where, str(exc))
    return DnsConfig(
        servers=tuple(servers), autodiscover=autodiscover, timeout=timeout, max_cache_size=cache
    )


def _text(element: ET.Element) -> str:
    return element_text(element)
