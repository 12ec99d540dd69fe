"""Start, run and stop the whole server: stores, spool, delivery, listeners, signals.

The order at start matters for security (``privileges.py``): bind the listening
sockets and load the TLS certificates while still root (ports below 1024, keys only root
reads), hand DATA to the unprivileged user, drop to it, and only then open the stores and
the spool. SIGHUP (``kittiwake cert reload``) reloads the certificates in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kittiwake.config.model import Config, ListenerConfig, Protocol
from kittiwake.delivery.direct import DirectDelivery
from kittiwake.delivery.journal import Journal
from kittiwake.delivery.maildir import MaildirDeliverer, MaildirOwner
from kittiwake.delivery.quota import Limit
from kittiwake.delivery.quota_limits import QuotaOverrides, Quotas
from kittiwake.dnsservice import DnsService
from kittiwake.hooks.api import Services
from kittiwake.hooks.loader import load_chains
from kittiwake.mailet import mailet_deliverer
from kittiwake.mailet.mailets import AddDeliveredToHeader
from kittiwake.mailet.remote import RemoteDelivery, SelfCheck
from kittiwake.queue._envelope import Envelope
from kittiwake.queue.runner import SpoolRunner
from kittiwake.queue.spool import Spool
from kittiwake.storage.sqlite import SqliteStore
from kittiwake.storage.sqlite_auth import SqliteAuthFailureStore
from kittiwake.storage.sqlite_hooks import SqliteHookStores

from .access import Access
from .limits import ConnectionLimits, LocalLimits
from .listener import Listener
from .lmtp import lmtp_session_factory, remove_unix_socket, unix_socket_files
from .privileges import drop, maildir_owner, prepare, run_as, share_data_dir
from .recipients import LocalResolver
from .session import RcptQuota, SessionContext
from .sockets import bind_sockets
from .tls import TlsContexts, TlsStartError

__all__ = ["PID_FILE", "Server", "run"]

#: in DATA: the process that takes SIGHUP (``kittiwake cert reload``) and SIGTERM
PID_FILE = "kittiwake.pid"

log = logging.getLogger("kittiwake")

GIL_SWITCH_INTERVAL = 0.0005  # seconds
#: seconds a delivery thread waits for the event loop to spool a mailet's new mail
_SPOOL_TIMEOUT = 120.0


class Server:
    """Everything one kittiwake process runs."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        *,
        sockets: dict[tuple[int, int], socket.socket] | None = None,
        limits: ConnectionLimits | None = None,
        tls: TlsContexts | None = None,
        maildir: MaildirOwner | None = None,
    ) -> None:
        """Args:
        config: the loaded configuration.
        data_dir: DATA.
        sockets: listening sockets bound by a supervisor, keyed by (listener index,
            bind index); None = bind them here.
        limits: connection counts shared with other workers; None = this process only.
        tls: the listeners' TLS contexts, built before privileges were dropped; None =
            build them here.
        maildir: owner, group and mode of delivered mail (kittiwake.xml <maildir>).

        Raises:
            TlsStartError: a listener's certificate cannot be loaded.
        """
        self.config = config
        self.data_dir = data_dir
        self._sockets = sockets
        self._limits = limits if limits is not None else LocalLimits()
        data_dir.mkdir(parents=True, exist_ok=True)
        if tls is None:
            tls = TlsContexts(data_dir)
            tls.build(config.listeners)
        self.tls = tls
        # CLI changes are seen within a quarter second; checking the database on every
        # RCPT costs a GIL hand-off per lookup (measured: a sixth of the loop thread).
        self.store = SqliteStore(data_dir / "kittiwake.db", refresh_interval=0.25)
        # failed AUTHs per client address, shared by every worker (issue 5)
        self.auth_failures = SqliteAuthFailureStore(data_dir / "auth-failures.db")
        # greylisting, rate limits, spam traps: opened by the handlers that use them
        self.hook_stores = SqliteHookStores(data_dir)
        for domain in config.domains.domain_names:
            self.store.add_domain(domain)
        self.spool = Spool(data_dir / "spool", sync=config.server.spool_sync)
        self.journal = Journal(data_dir / "journal", spool=data_dir / "spool")
        resolver = LocalResolver(self.store, self.store, config.server.postmaster)
        self._resolver = resolver
        hostname = config.listeners[0].hello_name if config.listeners else None
        deliverer = MaildirDeliverer(data_dir / "mail", self.journal, hostname=hostname)
        if maildir is not None and maildir.active:
            deliverer.owner = maildir
        opts = config.server
        # mailbox quotas (Maildir++): kittiwake.xml's default, `kittiwake quota set` overrides
        self.quota_overrides = QuotaOverrides(data_dir / "quota.db", refresh_interval=0.25)
        self.quotas = Quotas(
            Limit(opts.quota_storage, opts.quota_messages),
            self.quota_overrides,
            final=not opts.quota_tempfail,
        )
        deliverer.quotas = self.quotas
        self.local_deliverer = deliverer  # LMTP's, and LocalDelivery's in the container
        # issue 7: the mailet container (mailetcontainer.xml, else James's default flow)
        # takes every recipient; relayed mail goes to RemoteDelivery (issue 8, started below)
        self.mailets = mailet_deliverer(
            config.source,
            data_dir,
            deliverer,
            self.store,
            postmaster=config.server.postmaster,
            hostname=hostname or "localhost",
        )
        self.runner = SpoolRunner(
            self.spool,
            self.mailets,
            resolver.resolve,
            concurrency=config.server.spool_threads,
        )
        # RemoteDelivery's first attempt is made from the spool entry, held meanwhile
        self.mailets.context.holds = self.runner.holds
        self.listeners: list[Listener] = []
        # handler chains (issue 3): built here, started in start(), stopped in stop()
        self.dns = DnsService(config.dns)
        self.chains = load_chains(config).chains
        self._servers: list[asyncio.base_events.Server] = []
        self._stop = asyncio.Event()
        self._direct: DirectDelivery | None = None  # LMTP's delivery, when it listens
        self._unix_sockets: list[tuple[str, int]] = []  # (path, inode) to remove at stop
        self._remote: list[RemoteDelivery] = []

    async def start(self) -> None:
        """Recover the spool, start delivery, bind every listener.

        Raises:
            OSError: a listener cannot bind its address (the message names it).
        """
        await self.runner.start()  # opens the spool: recovers what a crashed process left
        # issue 8: RemoteDelivery mailets deliver their outgoing repositories from here
        self._remote = [
            m for m in self.mailets.container.mailets() if isinstance(m, RemoteDelivery)
        ]
        # kittiwake itself is never a destination (an MX pointing back here: 5.4.6)
        myself = SelfCheck(
            [(b.host, b.port) for c in self.config.listeners if c.enabled for b in c.binds],
            [c.hello_name for c in self.config.listeners],
        )
        for mailet in self._remote:
            mailet.start(self.dns, self._enqueue, myself)
        loop = asyncio.get_running_loop()

        def spool_mail(message: bytes, envelope: Envelope) -> str:
            # a mailet's new mail (a forward's remote copy), from a delivery thread:
            # the spool is the event loop's (queue IDs are allocated there)
            future = asyncio.run_coroutine_threadsafe(self._spool(message, envelope), loop)
            return future.result(timeout=_SPOOL_TIMEOUT)

        self.mailets.attach_spool(self.spool.root, spool_mail)
        for cfg in self.config.listeners:
            services = Services(
                cfg.name,
                cfg.hello_name,
                self.data_dir,
                self.dns,
                self.store,
                self.store,
                self.hook_stores,
            )
            await self.chains[cfg.name].start(services)
        sockets = self._sockets if self._sockets is not None else bind_sockets(self.config)
        if self._sockets is None:  # bound here: remove the socket files at stop
            self._unix_sockets = unix_socket_files(sockets.values())
        for li, cfg in enumerate(self.config.listeners):
            if not cfg.enabled:
                continue
            listener = Listener(cfg, self._context(cfg), self._limits, li)
            listener.ssl_context = self.tls.context(cfg.name)
            if cfg.tls is not None and listener.ssl_context is None:  # fail closed
                raise TlsStartError(f"listener {cfg.name}: no TLS context was built")
            listener.handshake_timeout = self.config.server.tls_handshake_timeout
            self.listeners.append(listener)
            if cfg.protocol is Protocol.LMTP:
                await self._start_lmtp(listener, [sockets[li, k] for k in _unix_keys(cfg)])
            implicit = listener.implicit_tls()
            for bi, bind in enumerate(cfg.binds):
                server = await loop.create_server(
                    listener.factory,
                    sock=sockets[li, bi],
                    backlog=cfg.connection_backlog,
                    ssl=implicit,
                    ssl_handshake_timeout=listener.handshake_timeout if implicit else None,
                )
                self._servers.append(server)
                log.info("listener %s (%s) on %s", cfg.name, cfg.protocol.value, bind)

    async def _start_lmtp(self, listener: Listener, unix: list[socket.socket]) -> None:
        """LMTP sessions deliver straight into the mailboxes (``lmtp.py``), through
        the spool runner's Maildir deliverer and journal; serve the Unix sockets."""
        if self._direct is None:
            self._direct = DirectDelivery(
                self.local_deliverer, self.spool.reserve, quota_final=self.quotas.final
            )
        resolver = LocalResolver(self.store, self.store, self.config.server.postmaster)
        listener.session_factory = lmtp_session_factory(self._direct, resolver.resolve)
        cfg = listener.config
        for path, sock in zip(cfg.unix_sockets, unix, strict=True):
            server = await asyncio.get_running_loop().create_unix_server(
                listener.factory, sock=sock, backlog=cfg.connection_backlog
            )
            self._servers.append(server)
            log.info("listener %s (%s) on unix:%s", cfg.name, cfg.protocol.value, path)

    async def _enqueue(
        self, message: bytes, sender: str, recipients: Sequence[str], state: str, error: str
    ) -> str:
        """Put a mail made by RemoteDelivery (a failure for its bounce processor, a DSN)
        in the spool, to be processed from ``state`` (root if empty)."""
        env = Envelope(
            queue_id="",
            sender=sender,
            recipients=tuple(recipients),
            client_address="127.0.0.1",
            helo=self.mailets.context.hostname,
            received_at=time.time(),
            protocol="LOCAL",
            size=len(message),
            auth_network=True,
            state=state,
            error=error,
        )
        queue_id = await self._spool(message, env)
        self.runner.wake()
        return queue_id

    async def _spool(self, message: bytes, envelope: Envelope) -> str:
        writer = self.spool.begin()
        try:
            writer.write(message)
            await writer.commit(dataclasses.replace(envelope, queue_id=writer.queue_id))
        finally:
            writer.abort()  # does nothing once committed
        return writer.queue_id

    def _context(self, cfg: ListenerConfig) -> SessionContext:
        return SessionContext(
            hostname=cfg.hello_name,
            protocol="LMTP" if cfg.protocol is Protocol.LMTP else "SMTP",
            domains=self.store,
            users=self.store,
            spool=self.spool,
            hooks=self.chains[cfg.name],
            auth_required=cfg.auth_required,
            access=self._access(cfg),
            quota=RcptQuota(self.local_deliverer, self._resolver.resolve, self.quotas.final),
            # LMTP judges aliases at RCPT and delivers to what they expand to (issue 6)
            rewrites=self.store if cfg.protocol is Protocol.LMTP else None,
            delivered_to=any(
                isinstance(m, AddDeliveredToHeader) for m in self.mailets.container.mailets()
            ),
        )

    def _access(self, cfg: ListenerConfig) -> Access | None:
        """AUTH, trusted networks, identity checks and aliases of an SMTP listener."""
        if cfg.protocol is not Protocol.SMTP:
            return None  # LMTP: no AUTH; the MTA in front has rewritten already
        return Access(
            config=cfg.auth,
            domains=self.store,
            users=self.store,
            rewrites=self.store,
            repository=self.config.users,
            default_domain=self.config.domains.default_domain,
            failures=self.auth_failures,
        )

    def request_stop(self) -> None:
        self._stop.set()

    def reload_certificates(self) -> None:
        """SIGHUP: reload every listener's certificate; no connection is dropped."""
        log.info("SIGHUP: reloading certificates")
        self.tls.reload()

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
        for chain in self.chains.values():
            await chain.stop()
        for mailet in self._remote:
            await mailet.stop()
        for path, inode in self._unix_sockets:
            remove_unix_socket(path, inode)
        if self._direct is not None:
            await asyncio.to_thread(self._direct.close)  # deliveries under way finish
        await self.runner.stop()  # closes the spool it opened
        self.mailets.close()
        self.journal.close()
        self.quota_overrides.close()
        self.auth_failures.close()
        self.store.close()


async def _serve(
    config: Config,
    data_dir: Path,
    sockets: dict[tuple[int, int], socket.socket] | None = None,
    limits: ConnectionLimits | None = None,
    tls: TlsContexts | None = None,
    maildir: MaildirOwner | None = None,
) -> None:
    server = Server(config, data_dir, sockets=sockets, limits=limits, tls=tls, maildir=maildir)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    log.info("kittiwake ready, data in %s", data_dir)
    await server.wait_stopped()
    log.info("stopping: closing listeners, finishing open transactions")
    await server.stop()
    log.info("stopped")


def serve_forever(
    config: Config,
    data_dir: Path,
    sockets: dict[tuple[int, int], socket.socket] | None = None,
    limits: ConnectionLimits | None = None,
    tls: TlsContexts | None = None,
    maildir: MaildirOwner | None = None,
) -> None:
    """Serve in this process until SIGTERM or SIGINT, on uvloop when it is installed."""
    # Delivery and spool threads run Python too; with the default 5 ms GIL switch interval
    # the event loop waits up to 5 ms each time it needs the GIL back, which showed as
    # 16 ms greetings and 24 ms end-of-data replies under load.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    main = _serve(config, data_dir, sockets, limits, tls, maildir)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
    else:
        uvloop.run(main)


def _unix_keys(cfg: ListenerConfig) -> range:
    """Where a listener's Unix sockets are in ``bind_sockets``'s numbering."""
    return range(len(cfg.binds), len(cfg.binds) + len(cfg.unix_sockets))


def run(config: Config, data_dir: Path, workers: int = 1, user: str | None = None) -> int:
    """Serve until SIGTERM or SIGINT: in this process, or in ``workers`` processes.

    Started as root: bind, load certificates, hand DATA over, drop to the user (see the
    module doc), then serve.

    Args:
        user: run as this user when started as root (``--user``); None: kittiwake.xml's
            ``<user>``, else ``kittiwake``.

    Returns:
        the exit status (0 after a clean stop).

    Raises:
        PrivilegeError: the user or a Maildir owner is unusable.
        TlsStartError: a listener's certificate cannot be loaded.
        OSError: a listener cannot bind its address.
    """
    who = run_as(config.server, user)
    owner = maildir_owner(config.server, who)
    sockets = bind_sockets(config)
    unix_files = unix_socket_files(sockets.values())  # LMTP's, removed at the end
    try:
        data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        tls = TlsContexts(data_dir)
        tls.build(config.listeners)  # as root: keys only root may read load too
        if who is not None:
            prepare(data_dir, who, owner)
            drop(who)
        share_data_dir(data_dir, owner)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    pid_file = data_dir / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        if workers <= 1:
            serve_forever(config, data_dir, sockets, tls=tls, maildir=owner)
            return 0
        from .workers import supervise

        return supervise(config, data_dir, workers, sockets=sockets, tls=tls, maildir=owner)
    finally:
        if workers <= 1:  # bound by run(), not by the Server (a supervisor removes its own)
            for path, inode in unix_files:
                remove_unix_socket(path, inode)
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
