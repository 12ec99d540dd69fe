"""RemoteDelivery: relayed mail out to other servers over SMTP (RFC 5321), with retries.

Theory of operation
-------------------
:meth:`RemoteDelivery.service` runs in a delivery worker thread and never touches the
network: it stores the mail durably in the ``outgoing`` repository
(``DATA/repositories/outgoing``) and finishes it, so the spool entry goes. Beside each
stored mail a ``<key>.retry`` file holds the attempt count and the time of the next
attempt (no file: attempt now).

:meth:`RemoteDelivery.start` (called by the server in each process, with its
:class:`~kittiwake.dnsservice.DnsService` and a function that puts a new mail in the
spool) starts an asyncio task that sweeps the repository (woken at once by
``service``, otherwise every second) and delivers the due mails, ``deliveryThreads``
at a time. A mail being delivered is locked (``flock`` on ``<key>.lock``), so worker
processes sharing DATA never send it twice at once.

One attempt: the recipients are grouped by domain; each domain's hosts are, in order,
the gateways (``gateway``), or the MX hosts by preference (random among equals), or its
A/AAAA addresses when it has no MX at all (RFC 5321 5.1), or the address of an IP
literal. A temporary DNS failure defers (never a fall back to A); a null MX (RFC 7505)
or a domain that does not exist fails at once (after ``maxDnsProblemRetries``). Hosts
are tried in turn until one takes the transaction; STARTTLS is used whenever offered
(opportunistic, RFC 7435: the certificate is not checked; a failed handshake is retried
in clear). A 5xx reply fails the recipients it concerns; a 4xx, a timeout or a lost
connection on every host defers them to the next attempt of the ``delayTime`` schedule.

Failed recipients (5xx, or retries exhausted: James's ``maxRetries``) are reported to
the sender: the mail goes into the spool to start in ``bounceProcessor`` (its error
message is the reply), whose ``DSNBounce`` makes the DSN; without a bounce processor a
DSN is built here (:func:`~kittiwake.delivery.dsn.build_dsn`). The null sender never
gets one. Delivery is at least once: a crash between the remote server's 250 and the
removal from the repository sends the mail again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from kittiwake.delivery.dsn import DsnRecipient, build_dsn
from kittiwake.dnsservice import DnsService, DnsTempError
from kittiwake.mailet.api import GHOST, Mail, Mailet, MailetConfig, MailetError
from kittiwake.mailet.repository import MailRepository

__all__ = ["Enqueue", "RemoteDelivery", "Route", "parse_delay_time", "resolve_route"]

log = logging.getLogger("kittiwake.remote")

#: (message, sender, recipients, state, error) -> queue ID: puts a mail in the spool
Enqueue = Callable[[bytes, str, Sequence[str], str, str], Awaitable[str]]

_UNITS = {
    "": 1,
    "ms": 1,
    "msec": 1,
    "msecs": 1,
    "s": 1000,
    "sec": 1000,
    "secs": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "mins": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_DELAY = re.compile(r"^\s*(?:(\d+)\s*\*)?\s*(\d+)\s*([a-zA-Z]*)\s*$")
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
#: seconds between sweeps of the outgoing repository when nothing wakes the task
_SWEEP = 1.0


def parse_delay_time(text: str) -> list[float]:
    """James's ``delayTime``: ``"5000, 100000"`` or ``"4*15 minute, 2*1 hour"`` -> the
    delays in seconds, one per retry.

    Raises:
        MailetError: a part that is not ``[attempts*]delay [unit]``.
    """
    out: list[float] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _DELAY.match(part)
        unit = m.group(3).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise MailetError(f"<delayTime>: {part.strip()!r} is not [attempts*]delay [unit]")
        attempts = int(m.group(1)) if m.group(1) else 1
        out.extend([int(m.group(2)) * _UNITS[unit] / 1000.0] * attempts)
    if not out:
        raise MailetError("<delayTime> is empty")
    return out


@dataclass(frozen=True, slots=True)
class Route:
    """Where a domain's mail goes: hosts in order, or why not."""

    #: (name for logs and TLS, address, port) to try in order
    hosts: tuple[tuple[str, str, int], ...] = ()
    #: no route: "temporary" (try again later) or "permanent" (bounce)
    failure: str = ""
    reason: str = ""


def _ip_literal(domain: str) -> str | None:
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def resolve_route(dns: DnsService, domain: str, port: int = 25) -> Route:
    """The hosts for ``domain`` per RFC 5321 section 5."""
    literal = _ip_literal(domain)
    if literal is not None:
        return Route(((literal, literal, port),))
    if domain.startswith("["):
        return Route(failure="permanent", reason=f"5.1.2 bad address literal {domain}")
    try:
        mxs = await dns.mx(domain)
    except DnsTempError as exc:
        return Route(failure="temporary", reason=f"4.4.3 DNS lookup failed: {exc}")
    if any(name in ("", ".", "@") for _, name in mxs):
        return Route(failure="permanent", reason=f"5.1.10 {domain} accepts no mail (null MX)")
    names: list[str] = []
    if mxs:
        by_pref: dict[int, list[str]] = {}
        for pref, name in mxs:
            by_pref.setdefault(pref, []).append(name)
        for pref in sorted(by_pref):
            group = by_pref[pref]
            random.shuffle(group)
            names.extend(group)
    else:
        names = [domain]  # the implicit MX (RFC 5321 5.1)
    hosts: list[tuple[str, str, int]] = []
    temp = 0
    for name in names:
        try:
            addresses = await dns.addresses(name)
        except DnsTempError:
            temp += 1
            continue
        hosts.extend((name, addr, port) for addr in addresses)
    if hosts:
        return Route(tuple(hosts))
    if temp:
        return Route(failure="temporary", reason=f"4.4.3 no address for the hosts of {domain}")
    if mxs:
        return Route(failure="permanent", reason=f"5.4.4 the MX hosts of {domain} have no address")
    return Route(failure="permanent", reason=f"5.1.2 no mail host for {domain}")


@dataclass
class _Result:
    """What one attempt did to each recipient: None = delivered."""

    delivered: list[str] = field(default_factory=list)
    #: recipient -> (reply text, permanent)
    failed: dict[str, tuple[str, bool]] = field(default_factory=dict)
    remote: dict[str, str] = field(default_factory=dict)


def _enhanced(code: int, text: str) -> str:
    m = _STATUS.match(text.strip())
    if m and m.group(1) == str(code)[0]:
        return f"{code} {text.strip()}"
    klass = "5" if code >= 500 else "4"
    return f"{code} {klass}.0.0 {text.strip()}"


class RemoteDelivery(Mailet):
    """James's RemoteDelivery (see the module docstring)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.outgoing = config.get("outgoing") or config.get("outgoingQueue") or "outgoing"
        delay = config.get("delayTime")
        self.delays = parse_delay_time(delay) if delay else [6 * 3600.0]
        # James: never fewer retries than the delayTime schedule has delays
        self.max_retries = max(config.get_int("maxRetries", 5), len(self.delays) if delay else 0)
        self.max_dns_retries = max(config.get_int("maxDnsProblemRetries", 0), 0)
        self.timeout = config.get_int("timeout", 180_000) / 1000.0
        self.connect_timeout = config.get_int("connectiontimeout", 60_000) / 1000.0
        self.threads = max(config.get_int("deliveryThreads", 1), 1)
        self.send_partial = config.get_bool("sendpartial", False)
        self.bounce_processor = config.get("bounceProcessor") or ""
        self.start_tls = config.get_bool("startTLS", True)
        self.load_balancing = config.get_bool("loadBalancing", True)
        port_text = config.get("mail.smtp.port")
        self.port = int(port_text) if port_text and port_text.isdigit() else 25
        self.gateway_port = config.get_int("gatewayPort", 25)
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
        helo = config.get("heloName") or config.context.hostname
        if not helo or helo.lower() in ("localhost", "localhost.localdomain"):
            helo = socket.getfqdn()
        self.helo = helo
        for unused in ("debug", "usePriority", "bind", "sslEnable", "onSuccess"):
            config.get(unused)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._dns: DnsService | None = None
        self._enqueue: Enqueue | None = None
        self._busy: set[str] = set()
        self._guard = threading.Lock()

    @property
    def repo(self) -> MailRepository:
        return self.context.repository(f"file://var/mail/{self.outgoing}/")

    # -- the mailet: into the outgoing repository -------------------------------

    def service(self, mail: Mail) -> None:
        repo = self.repo
        key = repo.store(mail)
        log.info("%s: queued for remote delivery as %s/%s", mail.name, repo.name, key)
        self.context.finished(mail, f"queued in repository {repo.name} for remote delivery")
        mail.state = GHOST
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    # -- the delivery task -------------------------------------------------------

    def start(self, dns: DnsService, enqueue: Enqueue) -> None:
        """Start delivering (in the running event loop)."""
        self._dns = dns
        self._enqueue = enqueue
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._sweeper(), name="remote-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sweeper(self) -> None:
        assert self._wake is not None
        sem = asyncio.Semaphore(self.threads)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                try:
                    due, wait = await asyncio.to_thread(self._due)
                except OSError as exc:
                    log.error("outgoing repository: %s", exc)
                    due, wait = [], _SWEEP
                for key in due:
                    if key in self._busy:
                        continue
                    self._busy.add(key)
                    await sem.acquire()
                    task = asyncio.create_task(self._attempt_guarded(key, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
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
            when = float(_read_retry(repo, key).get("next", 0.0))
            if when <= now:
                out.append(key)
            else:
                wait = min(wait, when - now)
        return out, wait

    async def _attempt_guarded(self, key: str, sem: asyncio.Semaphore) -> None:
        try:
            await self._attempt(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("remote delivery of %s failed unexpectedly", key)
        finally:
            self._busy.discard(key)
            sem.release()
            if self._wake is not None:
                self._wake.set()  # it may have a new retry time: sweep again

    async def _attempt(self, key: str) -> None:
        repo = self.repo
        lock = await asyncio.to_thread(_lock, repo, key)
        if lock is None:
            return  # another process has it
        try:
            try:
                mail = await asyncio.to_thread(repo.load, key)
            except KeyError:  # delivered by another process meanwhile
                with contextlib.suppress(FileNotFoundError):
                    (repo.path / f"{key}.lock").unlink()
                return
            retry = await asyncio.to_thread(_read_retry, repo, key)
            if retry.get("next", 0.0) > time.time():
                return
            attempts = int(retry.get("attempts", 0)) + 1
            result = await self._deliver(mail, attempts)
            await self._settle(repo, key, mail, result, attempts)
        finally:
            os.close(lock)

    async def _deliver(self, mail: Mail, attempt: int) -> _Result:
        result = _Result()
        groups: dict[str, list[str]] = {}
        for rcpt in mail.recipients:
            domain = rcpt.rpartition("@")[2].lower()
            groups.setdefault(domain, []).append(rcpt)
        data = mail.message.as_bytes()
        for domain, rcpts in groups.items():
            route = await self._route(domain, attempt)
            if route.failure:
                permanent = route.failure == "permanent"
                for r in rcpts:
                    result.failed[r] = (route.reason, permanent)
                log.info("%s: %s: %s", mail.name, domain, route.reason)
                continue
            await self._send(mail, data, rcpts, route, result)
        return result

    async def _route(self, domain: str, attempt: int) -> Route:
        assert self._dns is not None
        if self.gateways:
            hosts: list[tuple[str, str, int]] = []
            gateways = list(self.gateways)
            if self.load_balancing:
                random.shuffle(gateways)
            for host, port in gateways:
                literal = _ip_literal(f"[{host}]")
                if literal is not None:
                    hosts.append((host, literal, port))
                    continue
                with contextlib.suppress(DnsTempError):
                    hosts.extend((host, a, port) for a in await self._dns.addresses(host))
            if hosts:
                return Route(tuple(hosts))
            return Route(failure="temporary", reason="4.4.3 no address for the gateways")
        route = await resolve_route(self._dns, domain, self.port)
        if (
            route.failure == "permanent"
            and route.reason.startswith("5.1.2 no mail host")
            and attempt <= self.max_dns_retries
        ):
            return Route(failure="temporary", reason="4." + route.reason[2:])
        return route

    async def _send(
        self, mail: Mail, data: bytes, rcpts: list[str], route: Route, result: _Result
    ) -> None:
        last = "4.4.1 no host answered"
        for name, address, port in route.hosts:
            outcome = await self._transaction(mail, data, rcpts, name, address, port)
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

    async def _transaction(
        self, mail: Mail, data: bytes, rcpts: list[str], name: str, address: str, port: int
    ) -> _Result | str:
        """One SMTP transaction; a string: this host failed temporarily, try the next."""
        tls: list[bool | None] = [None, False] if self.start_tls else [False]
        smtp: aiosmtplib.SMTP | None = None
        for mode in tls:
            smtp = aiosmtplib.SMTP(
                hostname=address,
                port=port,
                local_hostname=self.helo,
                timeout=self.timeout,
                start_tls=mode,
                validate_certs=False,
                username=self.gateway_user if self.gateways else None,
                password=self.gateway_password if self.gateways and self.gateway_user else None,
            )
            try:
                await smtp.connect(timeout=self.connect_timeout)
                break
            except aiosmtplib.SMTPResponseException as exc:
                # a 4xx/5xx greeting, EHLO or AUTH: this host will not take it now
                return _enhanced(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                if mode is None and (isinstance(exc, ssl.SSLError) or "tls" in str(exc).lower()):
                    log.info(
                        "%s: STARTTLS with %s[%s] failed (%s); in clear",
                        mail.name,
                        name,
                        address,
                        exc,
                    )
                    smtp = None
                    continue
                return f"4.4.1 connection to {name}[{address}]:{port} failed: {exc}"
        if smtp is None:
            return f"4.7.5 TLS with {name}[{address}] failed"
        result = _Result()
        try:
            try:
                await smtp.mail(mail.sender or "")
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    text = _enhanced(exc.code, exc.message)
                    for r in rcpts:
                        result.failed[r] = (text, True)
                    return result
                return _enhanced(exc.code, exc.message)
            accepted: list[str] = []
            for r in rcpts:
                try:
                    await smtp.rcpt(r)
                    accepted.append(r)
                except aiosmtplib.SMTPResponseException as exc:
                    result.failed[r] = (_enhanced(exc.code, exc.message), exc.code >= 500)
            if not accepted:
                return result
            if result.failed and not self.send_partial:
                # James's sendpartial=false: no DATA; the refused ones fail as they
                # were refused, the accepted ones are tried again later
                await smtp.rset()
                for r in accepted:
                    result.failed[r] = ("4.5.3 other recipients were refused", False)
                return result
            try:
                await smtp.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                text = _enhanced(exc.code, exc.message)
                for r in accepted:
                    result.failed[r] = (text, exc.code >= 500)
                return result
            result.delivered.extend(accepted)
            log.info(
                "%s: delivered to %s via %s[%s]:%d",
                mail.name,
                ",".join(accepted),
                name,
                address,
                port,
            )
            return result
        except (aiosmtplib.SMTPException, OSError) as exc:
            for r in rcpts:
                if r not in result.failed and r not in result.delivered:
                    result.failed[r] = (f"4.4.2 {name}[{address}]: {exc}", False)
            return result
        finally:
            with contextlib.suppress(Exception):
                await smtp.quit()
            smtp.close()

    # -- after an attempt ----------------------------------------------------------

    async def _settle(
        self, repo: MailRepository, key: str, mail: Mail, result: _Result, attempts: int
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
                if later != mail.recipients:
                    mail.recipients = later
                    new = repo.store(mail)
                    _write_retry(repo, new, state)
                    _remove(repo, key)
                else:
                    _write_retry(repo, key, state)

            await asyncio.to_thread(keep)
        else:
            await asyncio.to_thread(_remove, repo, key)

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


def _status(text: str) -> str:
    m = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", text)
    return m.group(1) if m else "5.0.0"


def _read_retry(repo: MailRepository, key: str) -> dict[str, Any]:
    try:
        return dict(json.loads((repo.path / f"{key}.retry").read_bytes()))
    except (FileNotFoundError, ValueError):
        return {}


def _write_retry(repo: MailRepository, key: str, state: dict[str, Any]) -> None:
    path = repo.path / f"{key}.retry"
    tmp = repo.path / f".{key}.retry.tmp"
    tmp.write_bytes(json.dumps(state).encode())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(repo: MailRepository, key: str) -> None:
    repo.remove(key)
    for suffix in (".retry", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            (repo.path / f"{key}{suffix}").unlink()


def _lock(repo: MailRepository, key: str) -> int | None:
    fd = os.open(repo.path / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
