"""RemoteDelivery in process, against an aiosmtpd server on 127.0.0.2: a gateway
(no MX lookup), ``sendpartial`` false, and the DSN RemoteDelivery builds itself when
there is no bounce processor."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from kittiwake.config.model import Bind, DnsConfig
from kittiwake.dnsservice import DnsService
from kittiwake.mailet.api import Mail, MailetConfig
from kittiwake.mailet.message import Message
from kittiwake.mailet.remote import RemoteDelivery
from kittiwake.mailet.repository import RepositoryStore
from kw_dns import TestDns


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


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.datas = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return int(s.getsockname()[1])


def test_gateway_no_sendpartial_and_own_dsn(tmp_path: Path, dns_server: TestDns) -> None:
    sink = Sink()
    port = _port()
    controller = Controller(sink, hostname="127.0.0.2", port=port)
    controller.start()
    ctx = Context(tmp_path / "repositories")
    mailet = RemoteDelivery()
    mailet.init(
        MailetConfig(
            "RemoteDelivery",
            {
                "gateway": f"127.0.0.2:{port}",
                "delayTime": "100 ms",
                "maxRetries": "3",
                "sendpartial": "false",
            },
            ctx,  # type: ignore[arg-type]
        )
    )
    assert mailet.max_retries == 3 and mailet.helo == "mx.kittiwake.test"
    data = b"From: <alice@kittiwake.test>\r\nSubject: via gateway\r\n\r\nhi\r\n"
    mail = Mail(
        name="Q1",
        sender="alice@kittiwake.test",
        recipients=["good@far.test", "bad@far.test"],
        message=Message(None, len(data), data),
        received_at=time.time(),
    )
    mailet.service(mail)
    assert ctx.done == ["good@far.test", "bad@far.test"]  # the spool is done with it
    enqueued: list[tuple[bytes, str, list[str], str, str]] = []

    async def enqueue(
        message: bytes, sender: str, rcpts: Sequence[str], state: str, error: str
    ) -> str:
        enqueued.append((message, sender, list(rcpts), state, error))
        return "QDSN"

    async def run() -> None:
        dns = DnsService(
            DnsConfig(servers=(Bind("127.0.0.1", dns_server.port),), autodiscover=False)
        )
        mailet.start(dns, enqueue)
        deadline = time.monotonic() + 10
        while len(mailet.repo) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await mailet.stop()

    try:
        asyncio.run(run())
    finally:
        controller.stop()
    assert len(mailet.repo) == 0
    # the refused recipient stopped DATA for both; the good one went alone next time
    assert sink.messages == [("alice@kittiwake.test", ["good@far.test"])]
    ((dsn, sender, rcpts, state, error),) = enqueued
    assert sender == "" and rcpts == ["alice@kittiwake.test"] and state == "" and error == ""
    assert b"Final-Recipient: rfc822; bad@far.test" in dsn
    assert b"Status: 5.1.1" in dsn and b"Remote-MTA: dns; 127.0.0.2" in dsn
    assert b"good@far.test" not in dsn
    assert not list((tmp_path / "repositories" / "outgoing").glob("*.retry"))
