"""RemoteDelivery in process against aiosmtpd destinations on 127.0.0.x: a mailet
context, a destination that counts its connections and records what it got, and a
runner that delivers until the outgoing repository is empty."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from kittiwake.config.model import Bind, DnsConfig
from kittiwake.dnsservice import DnsService
from kittiwake.mailet.api import Mail, MailetConfig
from kittiwake.mailet.message import Message
from kittiwake.mailet.remote import RemoteDelivery, SelfCheck
from kittiwake.mailet.repository import RepositoryStore
from kw_dns import TestDns

ALICE = "alice@kittiwake.test"


class Context:
    postmaster = "postmaster@kittiwake.test"
    hostname = "mx.kittiwake.test"

    def __init__(self, root: Path) -> None:
        self.repositories = RepositoryStore(root)
        self.done: list[str] = []

    def repository(self, url: str) -> Any:
        return self.repositories.get(url)

    def finished(self, mail: Mail, detail: str, *, failed: bool = False) -> None:
        self.done.extend(mail.recipients)


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    data: bytes
    options: list[str]
    peer: str
    tls: bool


@dataclass
class Destination:
    """An aiosmtpd server: ``bad*`` recipients get 550; DATA waits ``hold`` seconds;
    EHLO keywords in ``hide`` are not offered."""

    host: str = "127.0.0.2"
    hold: float = 0.0
    hide: frozenset[str] = frozenset()
    messages: list[Received] = field(default_factory=list)
    #: connections accepted, open now, most open at once; peers of the connections
    connections: int = 0
    open: int = 0
    most_open: int = 0
    peers: list[str] = field(default_factory=list)
    rsets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None
    port: int = 0

    def start(self, **smtp: Any) -> Destination:
        """Args: aiosmtpd's ``tls_context`` (STARTTLS), ``ssl_context`` (implicit TLS),
        ``data_size_limit``, ``enable_SMTPUTF8``..."""
        self.port = free_port(self.host)
        dest = self

        class Counting(SMTP):
            counted = False

            def connection_made(self, transport: Any) -> None:
                if not self.counted:  # again after STARTTLS (RFC 3207 4.2): same one
                    self.counted = True
                    with dest.lock:
                        dest.connections += 1
                        dest.open += 1
                        dest.most_open = max(dest.most_open, dest.open)
                        dest.peers.append(str(transport.get_extra_info("peername")[0]))
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                with dest.lock:
                    dest.open -= 1
                super().connection_lost(error)

            async def smtp_RSET(self, arg: str) -> None:
                with dest.lock:
                    dest.rsets += 1
                await super().smtp_RSET(arg)

        class Factory(Controller):
            def factory(self) -> SMTP:
                return Counting(self.handler, **self.SMTP_kwargs)

        ssl_context = smtp.pop("ssl_context", None)
        self.controller = Factory(
            self, hostname=self.host, port=self.port, ssl_context=ssl_context, **smtp
        )
        self.controller.start()
        self.settled()  # the controller's readiness check has come and gone
        with self.lock:  # the controller's own readiness check is not a client
            self.connections = self.open = self.most_open = 0
            self.peers.clear()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if r[4:].split(" ")[0].upper() not in self.hide]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.hold:
            await asyncio.sleep(self.hold)
        content = envelope.original_content or envelope.content
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(content),
                    list(envelope.mail_options),
                    str(session.peer[0]),
                    # STARTTLS sets session.ssl; implicit TLS only shows on the transport
                    session.ssl is not None
                    or server.transport.get_extra_info("ssl_object") is not None,
                )
            )
        return "250 2.0.0 queued"

    def settled(self, timeout: float = 10.0) -> None:
        """Wait until no connection is open."""
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            time.sleep(0.02)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mailet_with(ctx: Context, **params: str) -> RemoteDelivery:
    mailet = RemoteDelivery()
    mailet.init(MailetConfig("RemoteDelivery", params, ctx))  # type: ignore[arg-type]
    return mailet


def make_mail(
    name: str,
    rcpts: Sequence[str],
    body: bytes = b"hi\r\n",
    sender: str | None = ALICE,
    subject: str = "test",
) -> Mail:
    data = f"From: <{ALICE}>\r\nSubject: {subject}\r\n\r\n".encode() + body
    return Mail(
        name=name,
        sender=sender,
        recipients=list(rcpts),
        message=Message(None, len(data), data),
        received_at=time.time(),
    )


Enqueued = list[tuple[bytes, str, list[str], str, str]]


def deliver(
    mailet: RemoteDelivery,
    dns_server: TestDns,
    *,
    myself: SelfCheck | None = None,
    until: Callable[[], bool] | None = None,
    timeout: float = 20.0,
) -> Enqueued:
    """Start the mailet, wait until its repository is empty (or ``until``), stop it;
    what it put in the spool (bounces, DSNs, onSuccess)."""
    enqueued: Enqueued = []

    async def enqueue(
        message: bytes, sender: str, rcpts: Sequence[str], state: str, error: str
    ) -> str:
        enqueued.append((message, sender, list(rcpts), state, error))
        return f"Q{len(enqueued)}"

    async def run() -> None:
        dns = DnsService(
            DnsConfig(servers=(Bind("127.0.0.1", dns_server.port),), autodiscover=False)
        )
        mailet.start(dns, enqueue, myself)
        deadline = time.monotonic() + timeout
        done = until or (lambda: len(mailet.repo) == 0)
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await mailet.stop()

    asyncio.run(run())
    return enqueued


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
