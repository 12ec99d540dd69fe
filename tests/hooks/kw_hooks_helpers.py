"""Drive a Session in process: a real spool under tmp_path, MemoryStore, a given chain."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kittiwake.hooks.api import SessionInfo
from kittiwake.hooks.chain import Chain
from kittiwake.protocol import (
    DataRequested,
    Hello,
    MailFrom,
    MessageComplete,
    MessageData,
    RcptTo,
    Reply,
)
from kittiwake.queue.spool import Spool
from kittiwake.server.session import Session, SessionContext
from kittiwake.storage.memory import MemoryStore

LOCAL = "kittiwake.test"


def store() -> MemoryStore:
    s = MemoryStore()
    s.add_domain(LOCAL)
    s.add_user(f"alice@{LOCAL}", None)
    return s


@contextlib.asynccontextmanager
async def session(
    tmp_path: Path,
    hooks: list[Any],
    ip: str = "192.0.2.10",
    ctx_kw: dict[str, Any] | None = None,
    **chain_kw: Any,
) -> AsyncIterator[Session]:
    spool = Spool(tmp_path / "spool", threads=1)
    spool.open()
    s = store()
    ctx = SessionContext(
        hostname="mx.kittiwake.test",
        protocol="SMTP",
        domains=s,
        users=s,
        spool=spool,
        hooks=Chain(hooks, **chain_kw),
        **(ctx_kw or {}),
    )
    info = SessionInfo("smtp", "SMTP", ip, 40000, "t.1")
    sess = Session(ctx, info)
    try:
        yield sess
    finally:
        sess.close()
        spool.close()


async def greet(sess: Session, name: str = "client.test") -> Reply:
    reply = await sess.decide(Hello("EHLO", name))
    assert isinstance(reply, Reply)
    return reply


async def mail(sess: Session, sender: str = "bob@remote.test", **params: str | None) -> Reply:
    reply = await sess.decide(MailFrom(sender, dict(params)))
    assert isinstance(reply, Reply)
    return reply


async def rcpt(sess: Session, address: str) -> Reply:
    reply = await sess.decide(RcptTo(address, {}))
    assert isinstance(reply, Reply)
    return reply


async def data(sess: Session, text: bytes, chunk: int = 0) -> Reply:
    start = await sess.decide(DataRequested(chunking=False))
    assert isinstance(start, Reply) and start.code == 354, start
    pieces = [text] if not chunk else [text[i : i + chunk] for i in range(0, len(text), chunk)]
    for piece in pieces:
        sess.notice(MessageData(piece))
    reply = await sess.decide(MessageComplete(len(text)))
    assert isinstance(reply, Reply)
    return reply


def spooled(tmp_path: Path) -> list[bytes]:
    """The data files in the spool (committed messages), oldest first."""
    files = sorted(
        (p for p in (tmp_path / "spool").rglob("*") if p.is_file() and p.name[:1].isdigit()),
        key=lambda p: p.stat().st_mtime_ns,
    )
    return [p.read_bytes() for p in files]
