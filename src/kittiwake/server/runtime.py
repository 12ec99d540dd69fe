"""Start, run and stop the whole server: stores, spool, delivery, listeners, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

from kittiwake.config.model import Config, ListenerConfig, Protocol
from kittiwake.delivery.direct import DirectDelivery
from kittiwake.delivery.journal import Journal
from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.queue.runner import SpoolRunner
from kittiwake.queue.spool import Spool
from kittiwake.storage.sqlite import SqliteStore

from .listener import Listener
from .lmtp import bind_unix_socket, lmtp_session_factory, remove_unix_socket
from .recipients import LocalResolver
from .session import SessionContext

__all__ = ["Server", "run"]

log = logging.getLogger("kittiwake")


class Server:
    """Everything one kittiwake process runs."""

    def __init__(self, config: Config, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # CLI changes are seen within a quarter second; checking the database on every
        # RCPT costs a GIL hand-off per lookup (measured: a sixth of the loop thread).
        self.store = SqliteStore(data_dir / "kittiwake.db", refresh_interval=0.25)
        for domain in config.domains.domain_names:
            self.store.add_domain(domain)
        self.spool = Spool(data_dir / "spool", threads=4)
        self.journal = Journal(data_dir / "journal")
        resolver = LocalResolver(self.store, self.store, config.server.postmaster)
        hostname = config.listeners[0].hello_name if config.listeners else None
        self.runner = SpoolRunner(
            self.spool,
            MaildirDeliverer(data_dir / "mail", self.journal, hostname=hostname),
            resolver.resolve,
            concurrency=config.server.spool_threads,
        )
        self.listeners: list[Listener] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._stop = asyncio.Event()
        self._direct: DirectDelivery | None = None  # LMTP's delivery, when it listens
        self._unix_sockets: list[tuple[str, int]] = []  # (path, inode) to remove at stop

    async def start(self) -> None:
        """Recover the spool, start delivery, bind every listener.

        Raises:
            OSError: a listener cannot bind its address (the message names it).
        """
        await self.runner.start()  # opens the spool: recovers what a crashed process left
        loop = asyncio.get_running_loop()
        for cfg in self.config.listeners:
            if not cfg.enabled:
                continue
            listener = Listener(cfg, self._context(cfg))
            self.listeners.append(listener)
            if cfg.protocol is Protocol.LMTP:
                await self._start_lmtp(listener)
            for bind in cfg.binds:
                family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
                try:
                    server = await loop.create_server(
                        listener.factory,
                        bind.host,
                        bind.port,
                        family=family,
                        backlog=cfg.connection_backlog,
                        reuse_address=True,
                    )
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"listener {cfg.name}: cannot bind {bind}: {exc.strerror}"
                    ) from exc
                self._servers.append(server)
                log.info("listener %s (%s) on %s", cfg.name, cfg.protocol.value, bind)

    async def _start_lmtp(self, listener: Listener) -> None:
        """LMTP sessions deliver straight into the mailboxes (``lmtp.py``), through
        the spool runner's Maildir deliverer and journal; bind the Unix sockets."""
        if self._direct is None:
            spool = self.spool

            def reserve() -> tuple[str, str]:
                writer = spool.begin()  # a queue ID and a data file path; no file yet
                return writer.queue_id, writer.path

            self._direct = DirectDelivery(self.runner.deliverer, reserve)
        resolver = LocalResolver(self.store, self.store, self.config.server.postmaster)
        listener.session_factory = lmtp_session_factory(self._direct, resolver.resolve)
        cfg = listener.config
        for path in cfg.unix_sockets:
            sock, inode = bind_unix_socket(cfg, path)
            self._unix_sockets.append((path, inode))
            server = await asyncio.get_running_loop().create_unix_server(
                listener.factory, sock=sock, backlog=cfg.connection_backlog
            )
            self._servers.append(server)
            log.info("listener %s (%s) on unix:%s", cfg.name, cfg.protocol.value, path)

    def _context(self, cfg: ListenerConfig) -> SessionContext:
        return SessionContext(
            hostname=cfg.hello_name,
            protocol="LMTP" if cfg.protocol is Protocol.LMTP else "SMTP",
            domains=self.store,
            users=self.store,
            spool=self.spool,
            hooks=(),
            wake_delivery=self.runner.wake,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful stop (issue 2, point 6): stop accepting, 421 4.3.2 to idle
        sessions, let open transactions finish within the grace period, then close."""
        for server in self._servers:
            server.close()
        for listener in self.listeners:
            listener.shutdown()
        deadline = asyncio.get_running_loop().time() + self.config.server.shutdown_grace
        while any(listener.connections for listener in self.listeners):
            if asyncio.get_running_loop().time() >= deadline:
                for listener in self.listeners:
                    listener.abort_all()
                break
            await asyncio.sleep(0.05)
        for path, inode in self._unix_sockets:
            remove_unix_socket(path, inode)
        if self._direct is not None:
            await asyncio.to_thread(self._direct.close)  # deliveries under way finish
        await self.runner.stop()  # closes the spool it opened
        self.journal.close()
        self.store.close()


async def _serve(config: Config, data_dir: Path) -> None:
    server = Server(config, data_dir)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    log.info("kittiwake ready, data in %s", data_dir)
    await server.wait_stopped()
    log.info("stopping: closing listeners, finishing open transactions")
    await server.stop()
    log.info("stopped")


def run(config: Config, data_dir: Path) -> None:
    """Serve until SIGTERM or SIGINT, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(config, data_dir))
    else:
        uvloop.run(_serve(config, data_dir))
