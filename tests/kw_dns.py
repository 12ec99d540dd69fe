"""A DNS server for tests: dnslib on 127.0.0.1, one random port, UDP and TCP.

Tests add records (``add("mx.test", "A", "192.0.2.1")``) and point kittiwake at it
(``dnsservice.xml`` with ``<server>127.0.0.1:PORT</server>``). A name with no record
of any type is NXDOMAIN; a name with records of other types answers NOERROR with no
data. ``fail(name)`` makes every question about a name SERVFAIL, ``drop(name)`` makes
the server never answer it (a timeout).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer

__all__ = ["TestDns"]


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data")


def _rdata(qtype: str, value: str) -> Any:
    if qtype == "A":
        return A(value)
    if qtype == "AAAA":
        return AAAA(value)
    if qtype == "MX":
        preference, _, exchange = value.partition(" ")
        return MX(exchange, int(preference))
    if qtype == "TXT":
        # strings longer than 255 bytes go in several character-strings (RFC 7208 3.3)
        data = value.encode()
        return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])
    if qtype == "PTR":
        return PTR(value)
    raise ValueError(qtype)


class TestDns:
    """The records and the two servers (UDP and TCP on the same port)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.failing: set[str] = set()
        self.dropped: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[DNSServer] = []
        for _ in range(20):
            port = _free_udp_port()
            try:
                udp = DNSServer(self, address="127.0.0.1", port=port, logger=_QuietLogger())
                tcp = DNSServer(
                    self, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger()
                )
            except OSError:
                continue
            self.port = port
            self._servers = [udp, tcp]
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for the test DNS server")
        for server in self._servers:
            server.start_thread()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dnsservice_xml(self, timeout: int = 2) -> str:
        return (
            '<?xml version="1.0"?>\n<dnsservice><servers>'
            f"<server>{self.address}</server></servers>"
            f"<autodiscover>false</autodiscover><timeout>{timeout}</timeout></dnsservice>\n"
        )

    def add(self, name: str, qtype: str, *values: str) -> None:
        key = (name.rstrip(".").lower(), qtype.upper())
        with self._lock:
            self.records.setdefault(key, []).extend(values)

    def fail(self, name: str) -> None:
        self.failing.add(name.rstrip(".").lower())

    def drop(self, name: str) -> None:
        self.dropped.add(name.rstrip(".").lower())

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    # dnslib's resolver interface
    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((qname, qtype))
            if qname in self.dropped:
                raise DNSError("dropped")  # dnslib sends nothing: the client times out
            reply = request.reply()
            if qname in self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            values = list(self.records.get((qname, qtype), ()))
            known = any(name == qname for name, _ in self.records)
        for value in values:
            reply.add_answer(
                RR(request.q.qname, request.q.qtype, rdata=_rdata(qtype, value), ttl=1)
            )
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
