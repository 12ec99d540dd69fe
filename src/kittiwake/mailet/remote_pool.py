"""RemoteDelivery's connections: at most ``maxConnectionsPerDomain`` open per
destination, kept open between transactions for the next mail to the same host.

A *destination* is a recipient domain (or ``gateway``: every domain through the
smarthosts). Each open connection holds one of its destination's slots, from the
connect until it is closed. A slot is counted twice:

* in this process (the slot indices in use), and
* across the worker processes sharing DATA, by a POSIX record lock on one byte of the
  outgoing repository's ``.connections`` file (offset: a hash of the destination
  times 1024, plus the slot index). Record locks go with the process, so a crashed
  worker frees its slots.

After a transaction the connection goes back to the pool, idle; the next mail to that
destination and host takes it (with an RSET first if it sat idle for a second or more:
RFC 5321 4.1.1.5, a clean state and a check that the server is still there) and goes
on without a new TCP and TLS handshake. An idle connection is closed (QUIT) after
``connectionIdleTime`` or once it has carried ``maxMessagesPerConnection`` mails; a
mail waiting for a slot of a full destination takes the first connection that comes
back, or closes an idle one to another host of that destination to use its slot.

A process waiting for a slot that *other* processes hold says so: it holds a shared
record lock on the destination's *want* byte (its last slot index, never a slot) while
it waits. The reaper of every process tries that byte of each destination it keeps
connections idle to (every ``_POLL``, not per mail: two system calls per mail were
measurable): taken by someone else, it closes them, and the slots go to the waiting
process at its next look. Without it, one worker could hold every slot idle for
``connectionIdleTime`` while another worker's mails waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from kittiwake.mailet.remote_smtp import close

__all__ = ["Connection", "ConnectionPool", "Slot"]

log = logging.getLogger("kittiwake.remote")

#: slot indices per destination in the lock file (maxConnectionsPerDomain is below);
#: the last one is the destination's *want* byte
SLOT_SPAN = 1024
_WANT = SLOT_SPAN - 1
#: seconds between two looks at other processes' slots while waiting for one
_POLL = 0.2


@dataclass(eq=False)
class Slot:
    """One of a destination's connection slots, held."""

    dest: str
    index: int


@dataclass(eq=False)
class Connection:
    """An open connection and the slot it holds."""

    smtp: aiosmtplib.SMTP
    slot: Slot
    address: str
    port: int
    messages: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class ConnectionPool:
    """Slots and idle connections of every destination (one per RemoteDelivery)."""

    def __init__(
        self,
        limit: int,
        max_messages: int,
        idle_time: float,
        lock_file: Path | None = None,
    ) -> None:
        self.limit = limit
        self.max_messages = max_messages
        self.idle_time = idle_time
        self.lock_file = lock_file
        self._fd: int | None = None
        self._used: dict[str, set[int]] = {}
        self._idle: dict[str, list[Connection]] = {}
        self._changed = asyncio.Event()
        #: destinations this process waits for a slot of (tasks waiting), its want held
        self._wanting: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        #: connections opened, for logs and tests
        self.opened = 0

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        if self.lock_file is not None:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._changed = asyncio.Event()
        if self.idle_time > 0:  # else nothing is kept idle
            self._reaper = asyncio.create_task(self._reap(), name="remote-delivery-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for conns in list(self._idle.values()):
            for conn in list(conns):
                self.discard(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._fd is not None:
            os.close(self._fd)  # frees every record lock this process holds on it
            self._fd = None

    # -- slots -------------------------------------------------------------------

    def _offset(self, dest: str, index: int) -> int:
        digest = hashlib.sha256(dest.lower().encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:6], "big") * SLOT_SPAN + index

    def _try_slot(self, dest: str) -> Slot | None:
        used = self._used.setdefault(dest, set())
        for index in range(self.limit):
            if index in used:
                continue
            if self._fd is not None:
                try:
                    fcntl.lockf(
                        self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(dest, index)
                    )
                except OSError:
                    continue  # another worker process holds this one
            used.add(index)
            return Slot(dest, index)
        return None

    def release(self, slot: Slot) -> None:
        used = self._used.get(slot.dest)
        if used is None or slot.index not in used:
            return
        used.discard(slot.index)
        if not used:
            del self._used[slot.dest]
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset(slot.dest, slot.index))
        self._changed.set()

    def in_use(self, dest: str) -> int:
        """Connections of ``dest`` open in this process (busy or idle)."""
        return len(self._used.get(dest, ()))

    # -- connections ---------------------------------------------------------------

    def idle_hosts(self, dest: str) -> set[tuple[str, int]]:
        return {(c.address, c.port) for c in self._idle.get(dest, ())}

    def _take_idle(self, dest: str, address: str, port: int) -> Connection | None:
        conns = self._idle.get(dest, [])
        for i in range(len(conns) - 1, -1, -1):  # the most recently used first
            if conns[i].address == address and conns[i].port == port:
                conn = conns.pop(i)
                if not conns:
                    self._idle.pop(dest, None)
                return conn
        return None

    async def lease(self, dest: str, address: str, port: int) -> Connection | Slot:
        """An idle connection to ``address``:``port`` for ``dest``, or a free slot to
        open one; waits while the destination has every slot busy."""
        wanting = False
        try:
            while True:
                conn = self._take_idle(dest, address, port)
                if conn is not None:
                    return conn
                slot = self._try_slot(dest)
                if slot is not None:
                    return slot
                others = self._idle.get(dest)
                if others:  # idle, to another host of this destination: free its slot
                    self.discard(others[0])
                    continue
                if not wanting:
                    wanting = True
                    self._wanting[dest] = self._wanting.get(dest, 0) + 1
                self._say_wanted(dest)  # again each look: a try can fail (see there)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_POLL):  # not wait_for: see remote.py
                        await self._changed.wait()
        finally:
            if wanting:
                self._unwant(dest)

    # -- the want byte: slots other processes keep idle ----------------------------

    def _say_wanted(self, dest: str) -> None:
        if self._fd is not None:
            # shared: every waiting process at once (taken again: a no-op). It fails
            # while another process tries it exclusively, for a moment: the next look
            # takes it.
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, self._offset(dest, _WANT))

    def _unwant(self, dest: str) -> None:
        n = self._wanting.get(dest, 0) - 1
        if n > 0:
            self._wanting[dest] = n
            return
        self._wanting.pop(dest, None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset(dest, _WANT))

    def wanted_elsewhere(self, dest: str) -> bool:
        """Another process waits for a slot of ``dest``."""
        if self._fd is None or dest in self._wanting:
            # (this process's own want: its waiting tasks take the connection, and an
            # exclusive try would replace its shared lock)
            return False
        offset = self._offset(dest, _WANT)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            return True
        with contextlib.suppress(OSError):
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)
        return False

    def opened_with(self, smtp: aiosmtplib.SMTP, slot: Slot, address: str, port: int) -> Connection:
        self.opened += 1
        return Connection(smtp, slot, address, port)

    def put_back(self, conn: Connection) -> None:
        """After a transaction that left the connection usable."""
        conn.messages += 1
        if (
            (self.max_messages and conn.messages >= self.max_messages)
            or self.idle_time <= 0
            or not conn.smtp.is_connected
        ):
            self.discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.slot.dest, []).append(conn)
        self._changed.set()

    def discard(self, conn: Connection) -> None:
        """Close it (in the background) and free its slot."""
        conns = self._idle.get(conn.slot.dest)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                self._idle.pop(conn.slot.dest, None)
        self.release(conn.slot)
        task = asyncio.create_task(close(conn.smtp))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(min(self.idle_time / 2, _POLL), 0.05))
            now = time.monotonic()
            for dest, conns in list(self._idle.items()):
                wanted = self.wanted_elsewhere(dest)
                for conn in list(conns):
                    if (
                        wanted
                        or now - conn.idle_since >= self.idle_time
                        or not conn.smtp.is_connected
                    ):
                        self.discard(conn)
