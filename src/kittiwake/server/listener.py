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
import ssl
import time
from collections.abc import Callable
from typing import cast

from kittiwake.config.model import ListenerConfig
from kittiwake.hooks.api import SessionInfo
from kittiwake.protocol import CoreSettings, Mode, Reply, ServerConnection, State
from kittiwake.protocol import replies as R

from .limits import ConnectionLimits, LocalLimits
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

    def __init__(
        self,
        config: ListenerConfig,
        ctx: SessionContext,
        limits: ConnectionLimits | None = None,
        index: int = 0,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.limits: ConnectionLimits = limits if limits is not None else LocalLimits()
        self.index = index  # this listener's row in ``limits``
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
            starttls=config.tls is not None and config.tls.starttls,
            auth=ctx.access is not None and config.auth.command,
            mail_parameters=ctx.hooks.mail_parameters,
        )
        self.connections: set[Connection] = set()
        #: makes this listener's sessions (the runtime sets LMTP's, ``lmtp.py``)
        self.session_factory: Callable[[SessionContext, SessionInfo], Session] = Session
        self.shutting_down = False
        #: the listener's TLS context (``tls.py`` builds it, reloads it in place)
        self.ssl_context: ssl.SSLContext | None = None
        #: seconds a TLS handshake may take (kittiwake.xml ``tlsHandshakeTimeout``)
        self.handshake_timeout = 30.0

    def implicit_tls(self) -> ssl.SSLContext | None:
        """The context for ``create_server(ssl=...)`` on an implicit TLS listener
        (socketTLS, RFC 8314): every connection is wrapped before ``connection_made``;
        a handshake that fails or times out closes that connection only."""
        tls = self.config.tls
        return None if tls is None or tls.starttls else self.ssl_context

    def factory(self) -> Connection:
        return Connection(self)

    def admit(self, ip: str) -> bytes | None:
        """Count a new connection in; None when admitted, else the 421 to send."""
        cfg = self.config
        refused = self.limits.acquire(
            self.index, ip, cfg.connection_limit, cfg.connection_limit_per_ip
        )
        if refused is None:
            return None
        if refused == "total":
            return R.TOO_MANY_CONNECTIONS.to_bytes()
        return R.TOO_MANY_CONNECTIONS_FROM_IP.to_bytes()

    def release(self, ip: str) -> None:
        self.limits.release(self.index, ip)

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
        # Between STARTTLS's 220 and our resuming after the handshake, octets reaching
        # data_received have come through TLS (clear text after the 220 went to the TLS
        # layer and failed the handshake): kept here, fed to the core after tls_started.
        self._after_handshake: bytearray | None = None
        # Python 3.11's get_running_loop() makes a getpid() system call (a fork check)
        # each time; a session asked about ten times per message.
        self._loop = asyncio.get_running_loop()

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
            closer=self.close_now,
        )
        self.session = self.listener.session_factory(self.listener.ctx, info)
        # the greeting comes from _run, after the connect hooks (they may refuse)
        self._task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._after_handshake is not None:
            self._after_handshake += data
            return
        injected = self.core.state is State.TLS_HANDSHAKE  # clear text after STARTTLS's 220
        self.core.receive_data(data)
        transport = self.transport
        if injected and transport is not None and not transport.is_closing():
            # The core closed with 554 5.7.0: say so and close now, whatever the session
            # loop is waiting for (it has not started the handshake yet).
            transport.write(self.core.data_to_send())
            transport.close()
        if len(self.core._buf) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.core.receive_data(b"")
        self._wake()
        # Keep the transport open until we have written our last reply (TLS cannot
        # half-close: asyncio ignores the answer there, and warns about True).
        return not self.core.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.receive_data(b"")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

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
        self._note_tls(transport)  # implicit TLS: the handshake is already done
        try:
            refusal = await session.start()  # the connect hooks
            if refusal is not None:
                transport.write(core.close(refusal))
                return
            transport.write(core.greeting())
            while True:
                for event in core.events():
                    if event.needs_reply:
                        reply = await session.decide(event)
                        if core.closed:  # closed while deciding (a hook's timer, abort)
                            break
                        core.send(reply)
                        if session.disconnect and not core.closed:  # a hook asked for it
                            closing = core.close()  # the reply just given, then nothing
                            if not transport.is_closing():
                                transport.write(closing)
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
                if core.state is State.TLS_HANDSHAKE:  # STARTTLS's 220 is out
                    if not await self._start_tls():
                        break
                    transport = cast(asyncio.Transport, self.transport)
                    continue
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
            if not transport.is_closing():
                transport.close()
            await session.end()  # the disconnect hooks
            self._finish()

    async def _start_tls(self) -> bool:
        """The STARTTLS handshake (RFC 3207). Octets the client sent before the 220 in
        clear text closed the connection in the core already (CVE-2011-0411); octets
        sent after it are in the TLS layer's hands now, and fail the handshake.

        Returns:
            False when the handshake failed or timed out (the connection is closed).
        """
        transport, session = self.transport, self.session
        ctx = self.listener.ssl_context
        assert transport is not None and session is not None and ctx is not None
        self._after_handshake = bytearray()
        try:
            tls_transport = await asyncio.get_running_loop().start_tls(
                transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.listener.handshake_timeout,
            )
        except Exception as exc:  # SSLError, ConnectionAbortedError (timeout), resets...
            log.info(
                "%s: STARTTLS handshake with [%s] failed: %s",
                session.info.session_id,
                self._ip,
                exc or type(exc).__name__,
            )
            if not transport.is_closing():
                transport.close()
            return False
        if tls_transport is None:  # pragma: no cover - the connection went away
            return False
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = tls_transport
        self.core.tls_started()
        early, self._after_handshake = bytes(self._after_handshake), None
        self._note_tls(self.transport, starttls=True)
        if early:
            self.core.receive_data(early)
        return True

    def _note_tls(self, transport: asyncio.BaseTransport, *, starttls: bool = False) -> None:
        """Tell the core and the session the connection is encrypted, and log it."""
        ssl_object = transport.get_extra_info("ssl_object")
        session = self.session
        if ssl_object is None or session is None:
            return
        self.core.tls = True
        cipher = ssl_object.cipher() or ("", "", 0)
        version = ssl_object.version()
        bits = int(cipher[2] or 0)
        if starttls:
            session.tls_started(version, cipher[0], bits)
        else:
            session.encrypted(version, cipher[0], bits)
        log.info(
            "%s: %s from [%s]: %s with cipher %s (%d bits)",
            session.info.session_id,
            "STARTTLS" if starttls else "TLS connection",
            self._ip,
            version,
            cipher[0],
            bits,
        )

    async def _wait_for_data(self, timeout: float) -> bool:
        """Wait until the client sends something; False on timeout."""
        loop = self._loop
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
        self.close_now(R.SHUTTING_DOWN)

    def close_now(self, reply: Reply | None = None) -> None:
        """Close the connection at once, after ``reply`` if given (also what a hook's
        ``SessionInfo.close`` does, e.g. MaxConnectionLifespanHandler)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.core.close(reply))
            self.transport.close()
        self._wake()


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)  # type: ignore[arg-type]


ConnectionFactory = Callable[[], Connection]
