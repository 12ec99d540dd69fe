"""The spool worker: takes committed messages out of the spool and delivers them.

Theory of operation
-------------------
``concurrency`` worker tasks share one list of ready entries. A worker takes everything
that is ready (up to ``batch_size``), resolves recipients to mailboxes on the event
loop, and runs the blocking part in a thread: the deliverer (links into Maildirs, one
fsync per touched ``new/``, one journal fsync), then :meth:`Spool.remove` for the
entries that are finished, then one log line per recipient. While one batch is in its
thread, the entries committed meanwhile queue up and go together in the next one, so
the per-batch costs (thread hop, fsyncs) are shared by more messages as load rises.

There is no polling delay: :meth:`wake` (also called by the spool after every commit)
releases a worker at once. A worker also wakes for retries of deferred recipients
(exponential back-off) and, every ``sweep_interval`` seconds, to take over the spool
slots of dead processes (their entries are delivered with the careful, idempotent
path; see :mod:`kittiwake.delivery.maildir`).

Recipients on other hosts (relayed for an authenticated client, or forwarded by an
alias) are RemoteDelivery's, which does not exist yet: ``is_remote`` picks them out,
they are never handed to the deliverer, and their message stays in the spool, parked
(no retry timer), logged once per process as ``status=deferred``; never dropped, never
bounced. A restart finds it again (and delivers nothing twice: the journal).

Each message's outcome is logged on ``kittiwake.mail`` the way Postfix does::

    0C9N3F2B4X01: to=<bob@a.test>, status=sent, delay=0.12, dsn=2.0.0, mailbox=DATA/mail/a.test/bob
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kittiwake.delivery.base import Deliverer, DeliveryJob, Outcome, Status, Target
from kittiwake.queue.spool import Spool, SpoolEntry

__all__ = ["SpoolRunner"]

log = logging.getLogger("kittiwake.queue")
mail_log = logging.getLogger("kittiwake.mail")


class SpoolRunner:
    """Delivers what the spool holds, from the event loop that owns the spool."""

    def __init__(
        self,
        spool: Spool,
        deliverer: Deliverer,
        resolve: Callable[[str], str | None],
        concurrency: int = 2,
        *,
        batch_size: int = 256,
        sweep_interval: float = 10.0,
        retry_base: float = 1.0,
        retry_max: float = 300.0,
        is_remote: Callable[[str], bool] | None = None,
        gather_delay: float = 0.005,
    ) -> None:
        """Args:
        spool: an open spool.
        deliverer: does the deliveries (blocking; run in threads).
        resolve: recipient address -> canonical mailbox, or None if there is no such
            mailbox (called on the event loop).
        concurrency: batches in flight at once.
        batch_size: most entries per batch.
        sweep_interval: seconds between looks for dead processes' spool slots.
        retry_base: seconds before the first retry of a deferred recipient; doubles.
        retry_max: longest wait between retries.
        is_remote: recipient address -> it is for another host (kept in the spool for
            RemoteDelivery); None = every recipient is local.
        gather_delay: seconds an idle worker waits after the first entry is ready, so
            that the entries committed meanwhile share its batch (0: none).
        """
        self.spool = spool
        self.deliverer = deliverer
        self.resolve = resolve
        self.concurrency = max(1, concurrency)
        self.batch_size = batch_size
        self.sweep_interval = sweep_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.is_remote = is_remote
        self.gather_delay = gather_delay
        #: messages waiting only for RemoteDelivery: queue id -> entry (kept in the spool)
        self.held: dict[str, SpoolEntry] = {}
        self._ready: list[SpoolEntry] = []
        self._retries: list[tuple[float, str, SpoolEntry]] = []  # heap by due time
        self._done: dict[str, set[int]] = {}  # queue id -> finished recipient indexes
        self._attempts: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._next_sweep = 0.0
        self._sweeping = False
        self._owns_spool = False

    # -- control ---------------------------------------------------------------

    async def start(self) -> None:
        """Recover and start delivering: open the spool if it is not open yet (in a
        thread: recovery reads the spool), then start the workers. Entries recovered
        at open are delivered first. A spool opened here is closed by :meth:`stop`.

        Raises:
            RuntimeError: already started.
            OSError: the spool could not be opened.
        """
        if self._tasks:
            raise RuntimeError("runner already started")
        if not self.spool.is_open:
            await asyncio.to_thread(self.spool.open)
            self._owns_spool = True
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kw-deliver")
        self._next_sweep = time.monotonic() + self.sweep_interval
        self.spool.add_listener(self.wake)
        self._tasks = [
            asyncio.get_running_loop().create_task(self._worker(), name=f"kw-deliver-{i}")
            for i in range(self.concurrency)
        ]

    def wake(self) -> None:
        """Deliver what is committed now (cheap; call after every commit)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Finish the batches in flight, then stop (and close the spool if
        :meth:`start` opened it). What was not started stays in the spool for the
        next start."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._owns_spool:
            self._owns_spool = False
            await asyncio.to_thread(self.spool.close)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until nothing is ready or in flight (retries may still be scheduled).

        Raises:
            TimeoutError: not idle within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                self._collect()
                if not self._ready and not self._busy:
                    return
                self._idle.clear()
                self._wakeup.set()
                await self._idle.wait()

    # -- workers ---------------------------------------------------------------

    def _collect(self) -> None:
        self._ready.extend(self.spool.take_ready())
        if self._retries:
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now:
                self._ready.append(heapq.heappop(self._retries)[2])

    def _timeout(self) -> float:
        now = time.monotonic()
        due = self._next_sweep
        if self._retries:
            due = min(due, self._retries[0][0])
        return max(0.0, due - now)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._collect()
            if self._stopping:
                return
            if time.monotonic() >= self._next_sweep and not self._sweeping:
                await self._sweep(loop)
                continue
            if not self._ready:
                if not self._busy:
                    self._idle.set()
                self._wakeup.clear()
                self._collect()  # anything that arrived between the check and the clear
                if not self._ready:
                    try:
                        async with asyncio.timeout(self._timeout()):
                            await self._wakeup.wait()
                    except TimeoutError:
                        continue
                    if self.gather_delay and not self._stopping:
                        # Woken by a commit: let a few more land before taking the
                        # batch. A batch costs a thread hand-off, a new/ fsync and a
                        # journal write whatever its size, and under load an idle
                        # worker was woken for nearly every single message.
                        await asyncio.sleep(self.gather_delay)
                    continue
            batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            if self._ready:
                self._wakeup.set()  # let another worker take the rest
            self._busy += 1
            try:
                await self._deliver(loop, batch)
            finally:
                self._busy -= 1

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = True
        try:
            taken = await loop.run_in_executor(self._pool, self.spool.adopt_orphans)
            if taken:
                log.info("took over %d message(s) from stopped processes", taken)
        except OSError as exc:
            log.error("spool sweep failed: %s", exc)
        finally:
            self._sweeping = False
            self._next_sweep = time.monotonic() + self.sweep_interval

    async def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[SpoolEntry]) -> None:
        jobs: list[DeliveryJob] = []
        entries: list[SpoolEntry] = []
        resolve, done_map, is_remote = self.resolve, self._done, self.is_remote
        held: dict[str, set[int]] = {}  # queue id -> local target indexes of this batch
        for entry in batch:
            env = entry.envelope
            done = done_map.get(env.queue_id)
            try:
                pending = [
                    (i, rcpt)
                    for i, rcpt in enumerate(env.recipients)
                    if done is None or i not in done
                ]
                remote = [(i, r) for i, r in pending if is_remote is not None and is_remote(r)]
                away = {i for i, _ in remote}
                targets = tuple(Target(i, r, resolve(r)) for i, r in pending if i not in away)
            except Exception:  # a store error must not kill the worker: retry later
                log.exception("%s: cannot resolve recipients", env.queue_id)
                self._retry(entry)
                continue
            if remote:
                held[env.queue_id] = {t.index for t in targets}
                self._hold(entry, remote)
                if not targets:
                    continue
            jobs.append(
                DeliveryJob(
                    env.queue_id,
                    entry.data_path,
                    env.received_at,
                    env.size,
                    entry.recovered,
                    targets,
                    env,
                )
            )
            entries.append(entry)
        if not jobs:
            return
        try:
            finished, unfinished = await loop.run_in_executor(
                self._pool, self._run, entries, jobs, frozenset(held)
            )
        except Exception:
            log.exception("delivery batch failed; will retry")
            for entry in entries:
                self._retry(entry)
            return
        for qid in finished:
            self._done.pop(qid, None)
            self._attempts.pop(qid, None)
        for entry, indexes in unfinished:
            qid = entry.envelope.queue_id
            self._done.setdefault(qid, set()).update(indexes)
            local = held.get(qid)
            if local is not None and local <= self._done[qid]:
                continue  # only remote recipients left: parked for RemoteDelivery
            self._retry(entry)

    def _hold(self, entry: SpoolEntry, remote: list[tuple[int, str]]) -> None:
        """Park a message's remote recipients (logged the first time only)."""
        qid = entry.envelope.queue_id
        if qid in self.held:
            return
        self.held[qid] = entry
        for _i, rcpt in remote:
            mail_log.info(
                "%s: to=<%s>, status=deferred, dsn=4.4.0, reason=kept in the queue for "
                "RemoteDelivery (not implemented yet)",
                qid,
                rcpt,
            )

    def _retry(self, entry: SpoolEntry) -> None:
        qid = entry.envelope.queue_id
        n = self._attempts[qid] = self._attempts.get(qid, 0) + 1
        delay = min(self.retry_base * 2 ** (n - 1), self.retry_max)
        heapq.heappush(self._retries, (time.monotonic() + delay, qid, entry))

    def _run(
        self,
        entries: Sequence[SpoolEntry],
        jobs: Sequence[DeliveryJob],
        held: frozenset[str] = frozenset(),
    ) -> tuple[list[str], list[tuple[SpoolEntry, set[int]]]]:
        """The thread half: deliver, drop finished entries, log. Touches no runner
        state. Returns the queue IDs finished, and the entries that still have
        deferred (or, for queue IDs in ``held``, remote) recipients with the indexes
        finished now."""
        results = self.deliverer.deliver(jobs)
        finished: list[SpoolEntry] = []
        unfinished: list[tuple[SpoolEntry, set[int]]] = []
        for entry, outcomes in zip(entries, results, strict=True):
            if entry.envelope.queue_id not in held and all(
                o.status is not Status.DEFERRED for o in outcomes
            ):
                finished.append(entry)
            else:
                unfinished.append(
                    (entry, {o.index for o in outcomes if o.status is not Status.DEFERRED})
                )
        self.spool.remove(finished)
        if mail_log.isEnabledFor(logging.INFO):
            now = time.time()
            for job, outcomes in zip(jobs, results, strict=True):
                _log_outcomes(job, outcomes, now)
        return [e.envelope.queue_id for e in finished], unfinished


def _log_outcomes(job: DeliveryJob, outcomes: list[Outcome], now: float) -> None:
    delay = now - job.received_at
    for o in outcomes:
        if o.repeated:
            mail_log.info(
                "%s: to=<%s>, status=%s, dsn=%s, (recorded before restart)",
                job.queue_id,
                o.recipient,
                o.status.value,
                o.dsn,
            )
        elif o.status is Status.SENT:
            mail_log.info(
                "%s: to=<%s>, status=sent, delay=%.2f, dsn=%s, mailbox=%s",
                job.queue_id,
                o.recipient,
                delay,
                o.dsn,
                o.location,
            )
        else:
            mail_log.info(
                "%s: to=<%s>, status=%s, delay=%.2f, dsn=%s, reason=%s",
                job.queue_id,
                o.recipient,
                o.status.value,
                delay,
                o.dsn,
                o.detail,
            )
