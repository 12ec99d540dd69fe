"""The asyncio adapter: moves bytes between a socket and the protocol core.

One ``Connection`` per client (an ``asyncio.Protocol``, cheaper per message than
streams); the core decides syntax and sequence, the ``Session`` decides policy, this
module owns I/O, timeouts, flow control, connection limits and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

from kittiwake.config.model import ListenerConfig
from kittiwake.hooks.api import SessionInfo
from kittiwake.protocol import CoreSettings, Mode, ServerConnection, State
from kittiwake.protocol import replies as R

from .lmtp import UNIX_CLIENT
from .session import Session, SessionContext

__all__ = ["Connection", "Listener"]

log = logging.getLogger("kittiwake.smtp")

#: stop reading from a client whose unprocessed input exceeds this
_READ_HIGH_WATER = 1024 * 1024
_IDLE_STATES = (State.CONNECTED, State.GREETED)
_session_ids = itertools.count(1)


class Listener:
    """One configured listener: its sessions' shared context and its limits."""

    def __init__(self, config: ListenerConfig, ctx: SessionContext) -> None:
        self.config = config
        self.ctx = ctx
        self.settings = CoreSettings(
            hostname=config.hello_name,
            mode=Mode.LMTP if ctx.protocol == "LMTP" else Mode.SMTP,
            greeting=config.greeting,
            max_line_length=config.max_line_length,
            max_message_size=config.max_message_size,
            max_recipients=config.max_recipients,
            helo_required=config.helo_ehlo_enforcement,
            brackets_required=config.address_brackets_enforcement,
            disabled_keywords=config.disabled_features,
        )
        self.connections: set[Connection] = set()
        #: makes this listener's sessions (the runtime sets LMTP's, ``lmtp.py``)
        self.session_factory: Callable[[SessionContext, SessionInfo], Session] = Session
        self._per_ip: Counter[str] = Counter()
        self.shutting_down = False

    def factory(self) -> Connection:
        return Connection(self)

    def admit(self, ip: str) -> bytes | None:
        """Count a new connection in; None when admitted, else the 421 to send."""
        cfg = self.config
        if cfg.connection_limit and len(self.connections) >= cfg.connection_limit:
            return R.TOO_MANY_CONNECTIONS.to_bytes()
        if cfg.connection_limit_per_ip and self._per_ip[ip] >= cfg.connection_limit_per_ip:
            return R.TOO_MANY_CONNECTIONS_FROM_IP.to_bytes()
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def shutdown(self) -> None:
        """Stop: idle sessions get 421 4.3.2 now, the others when their transaction ends."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.shutdown()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.core = ServerConnection(listener.settings)
        self.session: Session | None = None
        self._ip = ""
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    # ---- asyncio.Protocol callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._ip, port = str(peer[0]), int(peer[1])
        elif isinstance(peer, str):  # a Unix-domain socket: an MTA on this host
            self._ip, port = UNIX_CLIENT, 0
        else:  # reset before we got here
            self._ip, port = "", 0
        refusal = self.listener.admit(self._ip)
        if refusal is not None:
            log.warning("refused connection from [%s]: limit reached", self._ip)
            transport.write(refusal)
            transport.close()
            self._ip = ""
            return
        self.listener.connections.add(self)
        self._started = time.monotonic()
        info = SessionInfo(
            listener=self.listener.config.name,
            protocol=self.listener.ctx.protocol,
            client_ip=self._ip,
            client_port=port,
            session_id=f"{os.getpid():x}.{next(_session_ids):x}",
        )
        self.session = self.listener.session_factory(self.listener.ctx, info)
        transport.write(self.core.greeting())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.core.receive_data(data)
        if len(self.core._buf) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.core.receive_data(b"")
        self._wake()
        return True  # keep the transport open until we have written our last reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.receive_data(b"")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # ---- the session loop ---------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        core, session, transport = self.core, self.session, self.transport
        assert session is not None and transport is not None
        cfg = self.listener.config
        try:
            while True:
                for event in core.events():
                    if event.needs_reply:
                        core.send(await session.decide(event))
                    else:
                        session.notice(event)
                out = core.data_to_send()
                if self.listener.shutting_down and core.state in _IDLE_STATES:
                    out += core.close(R.SHUTTING_DOWN)
                if out and not transport.is_closing():
                    transport.write(out)
                    if self._drain is not None:
                        await self._drain
                if core.closed or transport.is_closing():
                    break
                if self._reading_paused and len(core._buf) < _READ_HIGH_WATER // 2:
                    self._reading_paused = False
                    transport.resume_reading()
                in_text = core.state in (State.DATA, State.CHUNKING)
                timeout = cfg.data_timeout if in_text else cfg.connection_timeout
                if not await self._wait_for_data(timeout):
                    transport.write(core.timed_out())
                    session.close()
                    break
        except Exception:
            log.exception("%s: session failed", session.info.session_id)
            if not transport.is_closing():
                transport.write(core.close(R.LOCAL_ERROR))
        finally:
            session.close()
            self._finish()

    async def _wait_for_data(self, timeout: float) -> bool:
        """Wait until the client sends something; False on timeout."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        handle = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None
        return not waiter.cancelled() and waiter.result() is None

    def _finish(self) -> None:
        transport, session = self.transport, self.session
        if transport is not None and not transport.is_closing():
            transport.close()
        if self in self.listener.connections:
            self.listener.connections.discard(self)
            self.listener.release(self._ip)
        if session is not None:
            info = session.info
            log.info(
                "%s: disconnect from [%s]:%d helo=%s mails=%d rcpts=%d duration=%.3fs",
                info.session_id,
                info.client_ip,
                info.client_port,
                info.helo or "-",
                session.messages,
                session.recipients,
                time.monotonic() - self._started,
            )

    def shutdown(self) -> None:
        """Graceful stop: an idle session is closed with 421 4.3.2 at once."""
        if self.core.state in _IDLE_STATES and self._waiter is not None:
            self._wake()

    def abort(self) -> None:
        """The grace period is over: close whatever state the session is in."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.core.close(R.SHUTTING_DOWN))
            self.transport.close()
        self._wake()


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)  # type: ignore[arg-type]


ConnectionFactory = Callable[[], Connection]
