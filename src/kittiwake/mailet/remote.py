"""RemoteDelivery: relayed mail out to other servers over SMTP (RFC 5321), with retries.

Theory of operation
-------------------
:meth:`RemoteDelivery.service` runs in a delivery worker thread and never touches the
network. Its usual answer is to *hold* the spool entry the mail came from
(:meth:`~kittiwake.mailet.api.MailetContext.hold`) and hand the mail, in memory, to
the delivery task for a first attempt straight from the spool, as Postfix makes it
from its queue file: the spool entry stays the durable mail until that attempt is
over. A mail it does not finish is then stored in the ``outgoing`` repository
(``DATA/repositories/outgoing``) for its retries, and only then is the hold released
and the spool entry gone. A mail that cannot be held (larger than ``_FRESH_MAX``, over
the memory budget, ``usePriority``, or a mail made by a mailet) is stored first, and
its first attempt made from the repository. Beside each stored mail a ``<key>.retry``
file holds the attempt count and the time of the next attempt (no file: attempt now);
the files and their format are listed in :mod:`kittiwake.mailet.remote_store`.

:meth:`RemoteDelivery.start` (called by the server in each process, with its
:class:`~kittiwake.dnsservice.DnsService`, a function that puts a new mail in the spool
and kittiwake's own names and listening addresses) starts an asyncio task that makes
the attempts: the held mails first, then each mail ``service`` stored (handed over at
once, with its message in memory), and the repository is swept every second (or when
the next retry is due) for the rest. It delivers ``deliveryThreads`` at a time
(highest James ``MAIL_PRIORITY`` first with ``usePriority``). A stored mail being
delivered is locked (``flock`` on ``<key>.json``), so worker processes sharing DATA
never send it twice at once.

One attempt: the recipients are grouped by destination (their domain; with ``gateway``,
all of them in one transaction); each destination's hosts are, in order, the gateways,
or the MX hosts by preference (random among equals), or its A/AAAA addresses when it
has no MX at all (RFC 5321 5.1), or the address of an IP literal
(:mod:`~kittiwake.mailet.remote_route`). Kittiwake itself is never a host: an MX that
points back at it is a configuration error that bounces with ``5.4.6 mail for DOMAIN
loops back to myself``. A temporary DNS failure defers (never a fall back to A); a null
MX (RFC 7505) or a domain that does not exist fails at once (after
``maxDnsProblemRetries``). Hosts are tried in turn until one takes the transaction
(:mod:`~kittiwake.mailet.remote_smtp`: TLS, ``bind``, SIZE, SMTPUTF8, 8BITMIME), over
a connection of the pool (:mod:`~kittiwake.mailet.remote_pool`): at most
``maxConnectionsPerDomain`` per destination, reused by the next mail to the same host.
A 5xx reply fails the recipients it concerns; a 4xx, a timeout or a lost connection on
every host defers them to the next attempt of the ``delayTime`` schedule.

Failed recipients (5xx, or retries exhausted: James's ``maxRetries``) are reported to
the sender: the mail goes into the spool to start in ``bounceProcessor`` (its error
message is the reply), whose ``DSNBounce`` makes the DSN; without a bounce processor a
DSN is built here (:func:`~kittiwake.delivery.dsn.build_dsn`). The null sender never
gets one. Delivered recipients go on, with ``onSuccess``, into the spool to start in
that processor. Delivery is at least once: a crash (or a stop) between the remote
server's 250 and the release of the spool entry or the removal from the repository
sends the mail again at the next start.

Every parameter given must be one kittiwake honours: any other stops the start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import aiosmtplib

from kittiwake.delivery.dsn import DsnRecipient, build_dsn
from kittiwake.dnsservice import DnsService, DnsTempError
from kittiwake.mailet.api import GHOST, Mail, Mailet, MailetConfig, MailetError
from kittiwake.mailet.message import Message
from kittiwake.mailet.remote_params import (
    PARAMETERS,
    bind_address,
    positive_ms,
    tcp_port,
    tls_parameters,
)
from kittiwake.mailet.remote_pool import Connection, ConnectionPool
from kittiwake.mailet.remote_route import (
    Route,
    SelfCheck,
    ip_literal,
    parse_delay_time,
    resolve_route,
)
from kittiwake.mailet.remote_smtp import ClientSettings, Result, open_connection, transaction
from kittiwake.mailet.remote_store import (
    CONNECTIONS_FILE,
    lock_mail,
    priority_of,
    read_retry,
    remove_mail,
    write_retry,
)
from kittiwake.mailet.repository import MailRepository

__all__ = [
    "Enqueue",
    "RemoteDelivery",
    "Route",
    "SelfCheck",
    "parse_delay_time",
    "resolve_route",
]

log = logging.getLogger("kittiwake.remote")

#: (message, sender, recipients, state, error) -> queue ID: puts a mail in the spool
Enqueue = Callable[[bytes, str, Sequence[str], str, str], Awaitable[str]]

#: seconds between sweeps of the outgoing repository (a mail stored by this process
#: does not wait for one: ``service`` hands it to the delivery task)
_SWEEP = 1.0
#: bytes of messages ``service`` hands over in memory at most (beyond: read back)
_FRESH_BYTES = 64 * 1024 * 1024
#: a message larger than this is always read back from the repository
_FRESH_MAX = 1024 * 1024
#: seconds a reused connection may take to answer RSET before it is given up
_RSET_TIMEOUT = 30.0
#: a kept connection idle for less than this is reused without an RSET first
_FRESH_IDLE = 1.0
#: the destination of every recipient when there are gateways
GATEWAY = "gateway"


class RemoteDelivery(Mailet):
    """James's RemoteDelivery (see the module docstring)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        unknown = sorted(set(config.params) - PARAMETERS)
        if unknown:
            # fail closed: a James parameter (or JavaMail property) kittiwake would
            # silently ignore could be a security setting
            raise MailetError(f"<{unknown[0]}> is not a RemoteDelivery parameter kittiwake honours")
        self.outgoing = config.get("outgoing") or config.get("outgoingQueue") or "outgoing"
        delay = config.get("delayTime")
        self.delays = parse_delay_time(delay) if delay else [6 * 3600.0]
        # James: never fewer retries than the delayTime schedule has delays
        self.max_retries = max(config.get_int("maxRetries", 5), len(self.delays) if delay else 0)
        self.max_dns_retries = max(config.get_int("maxDnsProblemRetries", 0), 0)
        self.timeout = positive_ms(config, "timeout", 180_000) / 1000.0
        self.connect_timeout = positive_ms(config, "connectiontimeout", 60_000) / 1000.0
        self.threads = max(config.get_int("deliveryThreads", 1), 1)
        self.send_partial = config.get_bool("sendpartial", False)
        self.bounce_processor = config.get("bounceProcessor") or ""
        self.on_success = config.get("onSuccess") or ""
        self.load_balancing = config.get_bool("loadBalancing", True)
        self.use_priority = config.get_bool("usePriority", False)
        self.debug = config.get_bool("debug", False)
        start_tls, implicit_tls, verify, trusted, tls_context = tls_parameters(config)
        default_port = 465 if implicit_tls else 25  # RFC 8314 3.3: submissions
        self.port = tcp_port(config, "mail.smtp.port", default_port)
        self.gateway_port = tcp_port(config, "gatewayPort", default_port)
        self.gateways: list[tuple[str, int]] = []
        for item in re.split(r"[,\s]+", config.get("gateway") or ""):
            if not item:
                continue
            host, colon, port = item.rpartition(":")
            if colon and port.isdigit() and not item.endswith("]"):
                self.gateways.append((host.strip("[]"), int(port)))
            else:
                self.gateways.append((item.strip("[]"), self.gateway_port))
        self.gateway_user = config.get("gatewayUsername") or config.get("gatewayusername")
        self.gateway_password = config.get("gatewayPassword") or ""
        helo = config.get("heloName") or ""
        if not helo:
            # kittiwake's default (James: the default domain): the server's own name,
            # fully qualified as RFC 5321 4.1.1.1 asks of an EHLO name
            helo = config.context.hostname or ""
            if not helo or helo.lower() in ("localhost", "localhost.localdomain"):
                helo = socket.getfqdn()
            elif "." not in helo:
                fqdn = socket.getfqdn(helo)
                helo = fqdn if "." in fqdn else helo
        self.helo = helo
        self.client = ClientSettings(
            helo=helo,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            start_tls=start_tls,
            implicit_tls=implicit_tls,
            verify=verify,
            trusted=trusted,
            bind=bind_address(config),
            send_partial=self.send_partial,
            tls_context=tls_context,
        )
        # kittiwake's: connections per destination, and how long they are kept
        self.max_connections = config.get_int("maxConnectionsPerDomain", 10)
        if not 1 <= self.max_connections <= 1000:
            raise MailetError("<maxConnectionsPerDomain> must be between 1 and 1000")
        self.max_messages = config.get_int("maxMessagesPerConnection", 100)
        if self.max_messages < 0:
            raise MailetError("<maxMessagesPerConnection> must be 0 (no limit) or more")
        self.idle_time = config.get_int("connectionIdleTime", 5000) / 1000.0
        if self.idle_time < 0:
            raise MailetError("<connectionIdleTime> must be 0 (no reuse) or more")
        self.pool = ConnectionPool(self.max_connections, self.max_messages, self.idle_time)
        self.myself = SelfCheck(names=[helo])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._dns: DnsService | None = None
        self._enqueue: Enqueue | None = None
        self._busy: set[str] = set()
        #: keys stored by this process and not yet dispatched, with the stored mail when
        #: it was kept in memory (see ``service``)
        self._fresh: dict[str, Mail | None] = {}
        self._fresh_bytes = 0
        #: mails ``service`` left in the spool for a first attempt from memory, with
        #: the function that releases their spool entries (see ``service``)
        self._direct: collections.deque[tuple[Mail, Callable[[bool], None], int]] = (
            collections.deque()
        )
        self._direct_lock = threading.Lock()
        self._direct_bytes = 0  # of the mails in _direct and in their first attempt

    @property
    def repo(self) -> MailRepository:
        return self.context.repository(f"file://var/mail/{self.outgoing}/")

    # -- the mailet: into the outgoing repository -------------------------------

    def service(self, mail: Mail) -> None:
        loop = self._loop
        if loop is not None and not self.use_priority and self._direct_first(mail, loop):
            return
        repo = self.repo
        key = repo.store(mail)
        log.info("%s: queued for remote delivery as %s/%s", mail.name, repo.name, key)
        if loop is not None:
            # handed to the delivery task at once (no wait for a sweep) and, small
            # enough, in memory: its first attempt does not read the files back. The
            # files are the mail all the same; the attempt locks them and checks they
            # are still there (another worker process may have sent it).
            copy = _stored_copy(mail)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._arrived, key, copy)
        self.context.finished(mail, f"queued in repository {repo.name} for remote delivery")
        mail.state = GHOST

    def _direct_first(self, mail: Mail, loop: asyncio.AbstractEventLoop) -> bool:
        """The first attempt straight from the spool, as Postfix makes it from its
        queue file: the spool entry is held (not finished) until the attempt is over,
        and only a mail that attempt could not deliver is stored in the outgoing
        repository, for its retries. Storing every mail first (two files, their
        fsyncs, a lock, then three removals) cost more than half of what relaying a
        message costs (benchmarks/relay_throughput.py). Durable all the same: the
        spool entry is the mail until the release, and a crash before it sends the
        mail again from the spool at the next start (at least once, as ever).

        False: store it instead (larger than what is kept in memory, over the memory
        budget, or a mail the spool cannot hold for us)."""
        size = mail.message.size
        with self._direct_lock:
            if size > _FRESH_MAX or self._direct_bytes + size > _FRESH_BYTES:
                return False
            self._direct_bytes += size
        release = self.context.hold(mail, "remote delivery from the spool")
        copy = _stored_copy(mail) if release is not None else None
        if release is None or copy is None:
            with self._direct_lock:
                self._direct_bytes -= size
            return False
        mail.state = GHOST
        with contextlib.suppress(RuntimeError):  # a closed loop: stopping; it stays spooled
            loop.call_soon_threadsafe(self._arrived_direct, copy, release, size)
        return True

    def _arrived_direct(self, copy: Mail, release: Callable[[bool], None], size: int) -> None:
        """In the event loop: a mail for its first attempt from the spool."""
        self._direct.append((copy, release, size))
        if self._wake is not None:
            self._wake.set()

    def _arrived(self, key: str, copy: Mail | None) -> None:
        """In the event loop: ``key`` was stored by ``service``."""
        old = self._fresh.pop(key, None)
        if old is not None:
            self._fresh_bytes -= old.message.file_size
        if copy is not None:
            size = copy.message.file_size
            if self._fresh_bytes + size > _FRESH_BYTES:
                copy = None  # over the budget: read back at the attempt
            else:
                self._fresh_bytes += size
        self._fresh[key] = copy
        if self._wake is not None:
            self._wake.set()

    # -- the delivery task -------------------------------------------------------

    def start(self, dns: DnsService, enqueue: Enqueue, myself: SelfCheck | None = None) -> None:
        """Start delivering (in the running event loop).

        Args:
            myself: kittiwake's listening addresses and names (never a destination);
                default: only the EHLO name.
        """
        self._dns = dns
        self._enqueue = enqueue
        if myself is not None:
            self.myself = SelfCheck(
                [(str(h), p) for h, p in myself.binds if h is not None],
                [*myself.names, self.helo],
            )
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.pool.lock_file = self.repo.path / CONNECTIONS_FILE
        self.pool.start()
        self._task = asyncio.create_task(self._sweeper(), name="remote-delivery")

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            while not task.done():  # a cancellation swallowed by a library: again
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
            self._task = None
            await self.pool.stop()

    async def _sweeper(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.threads)
        tasks: set[asyncio.Task[None]] = set()
        next_sweep = 0.0
        try:
            while True:
                self._wake.clear()
                # the whole repository is read at most once per sweep interval (or when
                # the next retry is due): mails stored by other processes, retries, and
                # what was there at start. A wake (a mail stored here) does not read it:
                # with a backlog, one listing per wake made the work per mail grow with
                # the backlog.
                due: list[str] = []
                if self.use_priority and self._fresh:
                    next_sweep = 0.0  # usePriority: new mails take their turn by priority
                if loop.time() >= next_sweep:
                    try:
                        due, wait = await asyncio.to_thread(self._due)
                    except OSError as exc:
                        log.error("outgoing repository: %s", exc)
                        due, wait = [], _SWEEP
                    next_sweep = loop.time() + max(wait, 0.01)
                due.reverse()  # popped from the end: in order
                while self._direct:
                    await sem.acquire()
                    first, release, size = self._direct.popleft()
                    task = asyncio.create_task(self._attempt_direct(first, release, size, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while due or self._fresh:
                    key = due.pop() if due else next(iter(self._fresh))
                    copy = self._fresh.pop(key, None)
                    if copy is not None:
                        self._fresh_bytes -= copy.message.file_size
                    if key in self._busy:
                        continue
                    self._busy.add(key)
                    await sem.acquire()
                    task = asyncio.create_task(self._attempt_guarded(key, sem, copy))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that comes as the event is set, and stop() would hang
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(next_sweep - loop.time(), 0.01)):
                        await self._wake.wait()
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _due(self) -> tuple[list[str], float]:
        """The keys due now, and the seconds until the next one is (at most a sweep)."""
        repo = self.repo
        now = time.time()
        out = []
        wait = _SWEEP
        keys = repo.keys()
        for key in keys:
            when = float(read_retry(repo, key).get("next", 0.0))
            if when <= now:
                out.append(key)
            else:
                wait = min(wait, when - now)
        if self.use_priority:  # James: higher MAIL_PRIORITY first (stable: else by key)
            out.sort(key=lambda k: -priority_of(repo, k))
        return out, wait

    async def _attempt_guarded(
        self, key: str, sem: asyncio.Semaphore, copy: Mail | None = None
    ) -> None:
        try:
            await self._attempt(key, copy)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("remote delivery of %s failed unexpectedly", key)
        finally:
            self._busy.discard(key)
            sem.release()
            # a deferred mail's next attempt is at least a second away: the next
            # sweep finds it, no need to read the repository again now

    def _claim(self, key: str, copy: Mail | None) -> tuple[int, Mail, dict[str, object]] | None:
        """In a thread: lock ``key``, and the mail (``copy``, or read back) and its
        retry state if it is there and due; None: not this process's to send now."""
        repo = self.repo
        try:
            lock = lock_mail(repo, key)
        except KeyError:  # delivered by another process meanwhile
            return None
        if lock is None:
            return None  # another process has it
        try:
            # the copy is the stored mail while its .json is (the files are never
            # changed in place, and replaced only under this lock)
            mail = copy if copy is not None else repo.load(key)
        except KeyError:  # delivered by another process meanwhile
            os.close(lock)
            return None
        except BaseException:
            os.close(lock)
            raise
        retry = read_retry(repo, key)
        if retry.get("next", 0.0) > time.time():
            os.close(lock)
            return None
        return lock, mail, retry

    async def _attempt(self, key: str, copy: Mail | None = None) -> None:
        repo = self.repo
        claimed = await asyncio.to_thread(self._claim, key, copy)
        if claimed is None:
            return
        lock, mail, retry = claimed
        try:
            attempts = int(str(retry.get("attempts", 0))) + 1
            result = await self._deliver(mail, attempts)
            await self._settle(repo, key, mail, result, attempts, had_retry=bool(retry))
        finally:
            os.close(lock)

    async def _attempt_direct(
        self, mail: Mail, release: Callable[[bool], None], size: int, sem: asyncio.Semaphore
    ) -> None:
        """The first attempt of a mail held in the spool (see ``_direct_first``); its
        entry is released once the mail is sent, bounced or stored for a retry. Not
        when stopping: the entry stays in the spool for the next start."""
        done = False
        try:
            result = await self._deliver(mail, 1)
            await self._settle(self.repo, None, mail, result, 1, had_retry=False)
            done = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: remote delivery failed unexpectedly; it runs again", mail.name)
        finally:
            sem.release()
            with self._direct_lock:
                self._direct_bytes -= size
        release(done)

    async def _deliver(self, mail: Mail, attempt: int) -> Result:
        result = Result()
        groups: dict[str, list[str]] = {}
        for rcpt in mail.recipients:
            dest = GATEWAY if self.gateways else rcpt.rpartition("@")[2].lower()
            groups.setdefault(dest, []).append(rcpt)
        data = mail.message.as_bytes()
        for dest, rcpts in groups.items():
            route = await self._route(dest, attempt)
            if route.failure:
                permanent = route.failure == "permanent"
                for r in rcpts:
                    result.failed[r] = (route.reason, permanent)
                log.info("%s: %s: %s", mail.name, dest, route.reason)
                continue
            await self._send(mail, data, rcpts, dest, route, result)
        return result

    async def _route(self, dest: str, attempt: int) -> Route:
        assert self._dns is not None
        if dest == GATEWAY:
            hosts: list[tuple[str, str, int]] = []
            gateways = list(self.gateways)
            if self.load_balancing:
                random.shuffle(gateways)
            mine = False
            prefs: list[int] = []
            for rank, (host, port) in enumerate(gateways):
                if self.myself.name(host):
                    mine = True
                    continue
                literal = ip_literal(f"[{host}]")
                addresses = [literal] if literal is not None else []
                if literal is None:
                    with contextlib.suppress(DnsTempError):
                        addresses = await self._dns.addresses(host)
                for a in addresses:
                    if self.myself.address(a, port):
                        mine = True
                    else:
                        hosts.append((host, a, port))
                        # in turn without loadBalancing (failover), else all equal
                        prefs.append(0 if self.load_balancing else rank)
            if hosts:
                return Route(tuple(hosts), preferences=tuple(prefs))
            if mine:
                return Route(failure="permanent", reason="5.4.6 the gateway loops back to myself")
            return Route(failure="temporary", reason="4.4.3 no address for the gateways")
        route = await resolve_route(self._dns, dest, self.port, self.myself)
        if (
            route.failure == "permanent"
            and route.reason.startswith("5.1.2 no mail host")
            and attempt <= self.max_dns_retries
        ):
            return Route(failure="temporary", reason="4." + route.reason[2:])
        return route

    async def _send(
        self, mail: Mail, data: bytes, rcpts: list[str], dest: str, route: Route, result: Result
    ) -> None:
        last = "4.4.1 no host answered"
        # a connection kept open from the last mail goes first among equals
        for name, address, port in route.ordered(self.pool.idle_hosts(dest)):
            outcome = await self._on_host(mail, data, rcpts, dest, name, address, port)
            if isinstance(outcome, str):
                last = outcome
                log.info("%s: %s[%s]:%d: %s", mail.name, name, address, port, outcome)
                continue
            for r in outcome.delivered:
                result.delivered.append(r)
                result.remote[r] = name
            for r, why in outcome.failed.items():
                result.failed[r] = why
                result.remote[r] = name
            return
        for r in rcpts:
            result.failed[r] = (last, False)

    async def _on_host(
        self,
        mail: Mail,
        data: bytes,
        rcpts: list[str],
        dest: str,
        name: str,
        address: str,
        port: int,
    ) -> Result | str:
        """One transaction with one host, over a pooled connection; a string: this
        host failed temporarily, try the next."""
        where = f"{name}[{address}]:{port}"
        level = logging.INFO if self.debug else logging.DEBUG
        while True:
            got = await self.pool.lease(dest, address, port)
            unchecked = False
            if isinstance(got, Connection):
                if not got.smtp.is_connected:  # the server closed it while it was idle
                    self.pool.discard(got)
                    continue
                if time.monotonic() - got.idle_since < _FRESH_IDLE:
                    # Back from a transaction a moment ago: the server reset its state
                    # with its 250 to the data (RFC 5321 4.1.1.4), and has not closed
                    # it (no EOF has come). No RSET round trip; should the MAIL find it
                    # gone all the same, the mail takes another connection below.
                    unchecked = True
                else:
                    try:  # RFC 5321 4.1.1.5: a clean state, and proof it is still open
                        await got.smtp.rset(timeout=min(self.timeout, _RSET_TIMEOUT))
                    except (aiosmtplib.SMTPException, OSError) as exc:
                        log.log(
                            level, "%s: kept connection to %s is gone: %s", mail.name, where, exc
                        )
                        self.pool.discard(got)
                        continue
                conn = got
                log.log(
                    level, "%s: reusing the connection to %s (%d)", mail.name, where, conn.messages
                )
            else:
                try:
                    smtp = await open_connection(
                        self.client,
                        name,
                        address,
                        port,
                        self.gateway_user if dest == GATEWAY else None,
                        self.gateway_password if dest == GATEWAY else None,
                    )
                except BaseException:
                    self.pool.release(got)
                    raise
                if isinstance(smtp, str):
                    self.pool.release(got)
                    return smtp
                conn = self.pool.opened_with(smtp, got, address, port)
                log.log(
                    level, "%s: connected to %s (slot %d of %s)", mail.name, where, got.index, dest
                )
            try:
                outcome, reusable = await transaction(
                    conn.smtp, self.client, mail, data, rcpts, where
                )
            except BaseException:
                self.pool.discard(conn)
                raise
            if unchecked and isinstance(outcome, str) and not conn.smtp.is_connected:
                # the kept connection was gone before anything was decided: not this
                # host's failure; the mail takes another connection
                log.log(level, "%s: kept connection to %s is gone: %s", mail.name, where, outcome)
                self.pool.discard(conn)
                continue
            break
        # Kept only after a transaction the server took something from: a server that
        # refused every recipient may do so by a policy it reads per session (Postfix's
        # smtpd keeps its lookup tables for the whole session), and the retry must meet
        # a fresh session, as Postfix's own client caches only sessions that went well.
        if reusable and isinstance(outcome, Result) and outcome.delivered:
            self.pool.put_back(conn)
        else:
            self.pool.discard(conn)
        return outcome

    # -- after an attempt ----------------------------------------------------------

    async def _settle(
        self,
        repo: MailRepository,
        key: str | None,
        mail: Mail,
        result: Result,
        attempts: int,
        had_retry: bool = True,
    ) -> None:
        exhausted = attempts > self.max_retries
        bounce: dict[str, str] = {}
        later: list[str] = []
        for rcpt in mail.recipients:
            if rcpt in result.delivered:
                continue
            text, permanent = result.failed.get(rcpt, ("4.4.1 not attempted", False))
            if permanent:
                bounce[rcpt] = text
            elif exhausted:
                bounce[rcpt] = f"5.4.7 gave up after {attempts} attempts; last error: {text}"
            else:
                later.append(rcpt)
        if bounce:
            await self._bounce(mail, bounce, result.remote)
        if self.on_success and result.delivered:
            # James's onSuccess: the delivered recipients go on in that processor
            assert self._enqueue is not None
            await self._enqueue(
                mail.message.as_bytes(), mail.sender or "", result.delivered, self.on_success, ""
            )
        if later:
            delay = self.delays[min(attempts - 1, len(self.delays) - 1)]
            nxt = time.time() + delay
            reasons = {r: result.failed.get(r, ("", False))[0] for r in later}
            log.info(
                "%s: deferred %s (attempt %d of %d, next in %.1f s): %s",
                mail.name,
                ",".join(later),
                attempts,
                self.max_retries + 1,
                delay,
                "; ".join(sorted(set(reasons.values()))),
            )

            # "error": the last attempt's replies, for `kittiwake queue list|show`
            state = {
                "attempts": attempts,
                "next": nxt,
                "error": "; ".join(sorted(set(reasons.values()))),
            }

            def keep() -> None:
                if key is not None and later == mail.recipients:
                    write_retry(repo, key, state)  # the same mail: only its schedule
                    return
                mail.recipients = later
                new = repo.store(mail)
                write_retry(repo, new, state)
                if key is None:  # a first attempt from the spool: stored only now
                    log.info("%s: queued for remote delivery as %s/%s", mail.name, repo.name, new)
                else:
                    remove_mail(repo, key)

            await asyncio.to_thread(keep)
        elif key is not None:
            # sent (or bounced/handed on, durably): the removal need not wait for its
            # directory fsync (see MailRepository.remove)
            await asyncio.to_thread(
                functools.partial(remove_mail, repo, key, retry=had_retry, sync=False)
            )

    async def _bounce(self, mail: Mail, failed: dict[str, str], remote: dict[str, str]) -> None:
        log.warning(
            "%s: failed: %s", mail.name, "; ".join(f"<{r}>: {t}" for r, t in failed.items())
        )
        if not mail.sender:
            log.info("%s: null sender, no bounce", mail.name)
            return
        assert self._enqueue is not None
        data = mail.message.as_bytes()
        if self.bounce_processor:
            by_text: dict[str, list[str]] = {}
            for r, text in failed.items():
                by_text.setdefault(text, []).append(r)
            for text, rcpts in by_text.items():
                await self._enqueue(data, mail.sender, rcpts, self.bounce_processor, text)
            return
        dsn = build_dsn(
            reporting_mta=self.helo,
            postmaster=self.context.postmaster,
            sender=mail.sender,
            recipients=[
                DsnRecipient(r, "failed", _status(t), t, remote.get(r, ""))
                for r, t in failed.items()
            ],
            original=data,
            queue_id=mail.name,
            arrival=mail.received_at,
            now=time.time(),
        )
        await self._enqueue(dsn, "", [mail.sender], "", "")

    def destroy(self) -> None:
        self._loop = None


def _stored_copy(mail: Mail) -> Mail | None:
    """What :meth:`MailRepository.load` would give for ``mail`` just stored, in memory;
    None when it is too large to be worth holding."""
    message = mail.message
    if message.size > _FRESH_MAX:
        return None
    data = message.as_bytes()
    return Mail(
        name=mail.name,
        sender=mail.sender,
        recipients=list(mail.recipients),
        message=Message(None, len(data), data),
        state=mail.state,
        remote_addr=mail.remote_addr,
        remote_host=mail.remote_host,
        auth_user=mail.auth_user,
        attributes=json.loads(json.dumps(_jsonable_attributes(mail))),
        error_message=mail.error_message,
        received_at=mail.received_at,
    )


def _jsonable_attributes(mail: Mail) -> dict[str, object]:
    return {
        k: v
        for k, v in mail.attributes.items()
        if isinstance(v, str | int | float | bool | type(None) | list | dict)
    }


def _status(text: str) -> str:
    m = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", text)
    return m.group(1) if m else "5.0.0"
