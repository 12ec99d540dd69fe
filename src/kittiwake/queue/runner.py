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

Held recipients: a deliverer may answer ``HELD`` for a recipient that another part of
the server has taken on without the spool entry being finished (RemoteDelivery's first
attempt, made straight from the spool file instead of a copy in its outgoing
repository). The taker registers each hold in :attr:`SpoolRunner.holds` (from the
delivery thread, before the batch returns) and releases it on the event loop when the
recipient is taken care of for good (sent, bounced, or stored in the outgoing
repository for later attempts), or releases it as not done (the entry then runs again
for those recipients). Meanwhile the entry stays in the spool, parked: no retry timer,
never run again for a held recipient. A crash or a stop before the release leaves the
entry in the spool, and the next start runs it again: the first attempt is at least
once, as every remote delivery is.

Each message's outcome is logged on ``kittiwake.mail`` the way Postfix does::

    0C9N3F2B4X01: to=<bob@a.test>, status=sent, delay=0.12, dsn=2.0.0, mailbox=DATA/mail/a.test/bob
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kittiwake.delivery.base import Deliverer, DeliveryJob, Outcome, Status, Target
from kittiwake.queue.spool import Spool, SpoolEntry

__all__ = ["SpoolRunner"]

log = logging.getLogger("kittiwake.queue")
mail_log = logging.getLogger("kittiwake.mail")


class _Hold:
    __slots__ = ("done", "open")

    def __init__(self) -> None:
        self.open = 0  # holds not released yet
        self.done: set[int] = set()  # indexes released as taken care of


class Holds:
    """The held recipients of the spool entries (thread-safe: a hold is taken in a
    delivery thread, released on the event loop). A queue ID's record lives from its
    first hold until the runner has taken in every release."""

    def __init__(self, on_settled: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._by_qid: dict[str, _Hold] = {}
        self._on_settled = on_settled

    def hold(self, queue_id: str) -> None:
        """One more hold on ``queue_id``'s entry (the deliverer answers HELD for its
        recipients): it stays in the spool until every hold is released."""
        with self._lock:
            found = self._by_qid.get(queue_id)
            if found is None:
                found = self._by_qid[queue_id] = _Hold()
            found.open += 1

    def release(self, queue_id: str, indexes: Iterable[int], *, done: bool) -> None:
        """On the event loop: a hold ends; ``done``: its recipient indexes are taken care
        of for good; else they are not done, and run again."""
        with self._lock:
            found = self._by_qid.get(queue_id)
            if found is None:
                return  # the entry finished without it (forget): nothing waits for it
            if found.open == 0:
                raise RuntimeError(f"{queue_id}: released more often than held")
            found.open -= 1
            if done:
                found.done.update(indexes)
            settled = found.open == 0
        if settled:
            self._on_settled(queue_id)

    def take(self, queue_id: str) -> set[int] | None:
        """The indexes released as done (empty: none, or no hold ever) once no hold is
        open, and forget them; None while a hold is open."""
        with self._lock:
            found = self._by_qid.get(queue_id)
            if found is None:
                return set()
            if found.open > 0:
                return None
            del self._by_qid[queue_id]
            return found.done

    def forget(self, queue_id: str) -> None:
        """``queue_id``'s entry left the spool (its outcomes were final all the same,
        a mail given up on after its hold was taken): a later release is ignored."""
        with self._lock:
            self._by_qid.pop(queue_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_qid)


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
        self.gather_delay = gather_delay
        #: recipients another part of the server has taken on (see the module docstring)
        self.holds = Holds(self._settled)
        #: entries waiting only for the release of their holds: queue id -> entry
        self.parked: dict[str, SpoolEntry] = {}
        self._finished: list[SpoolEntry] = []  # released for good: to remove
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
        next start, and so do parked entries (stop their holders first: a hold
        released after this is not taken in)."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._pool is not None:
            # released for good: not run again at the next start
            await self._remove_finished(asyncio.get_running_loop())
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
                if not self._ready and not self._busy and not self._finished:
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
            if self._finished:
                self._busy += 1
                try:
                    await self._remove_finished(loop)
                finally:
                    self._busy -= 1
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
        resolve, done_map = self.resolve, self._done
        for entry in batch:
            env = entry.envelope
            qid = env.queue_id
            if not self._absorb(qid):  # holds still open: nothing runs before they end
                self.parked[qid] = entry
                continue
            done = done_map.get(qid)
            try:
                targets = tuple(
                    Target(i, r, resolve(r))
                    for i, r in enumerate(env.recipients)
                    if done is None or i not in done
                )
            except Exception:  # a store error must not kill the worker: retry later
                log.exception("%s: cannot resolve recipients", qid)
                self._retry(entry)
                continue
            if not targets:  # every recipient taken care of meanwhile (released holds)
                self._finish(entry)
                continue
            jobs.append(
                DeliveryJob(
                    qid,
                    entry.data_path,
                    env.received_at,
                    env.size,
                    entry.recovered,
                    targets,
                    env,
                    head=entry.head,
                )
            )
            entries.append(entry)
        if not jobs:
            return
        try:
            finished, unfinished = await loop.run_in_executor(self._pool, self._run, entries, jobs)
        except Exception:
            log.exception("delivery batch failed; will retry")
            for entry in entries:
                self._after(entry)
            return
        for qid in finished:
            self._done.pop(qid, None)
            self._attempts.pop(qid, None)
            if self.holds:
                self.holds.forget(qid)
        for entry, indexes in unfinished:
            self._done.setdefault(entry.envelope.queue_id, set()).update(indexes)
            self._after(entry)

    # -- entries not finished by their batch ------------------------------------------

    def _absorb(self, qid: str) -> bool:
        """Take in the released holds of ``qid``; False while a hold is still open."""
        done = self.holds.take(qid)
        if done is None:
            return False
        if done:
            self._done.setdefault(qid, set()).update(done)
        return True

    def _after(self, entry: SpoolEntry) -> None:
        """An entry its batch did not finish: parked while holds are open, removed once
        every recipient is taken care of, else retried later."""
        qid = entry.envelope.queue_id
        if not self._absorb(qid):
            self.parked[qid] = entry
        elif self._done.get(qid, set()) >= set(range(len(entry.envelope.recipients))):
            self._finish(entry)
        else:
            self._retry(entry)

    def _settled(self, qid: str) -> None:
        """On the event loop: the last open hold of ``qid`` was released."""
        entry = self.parked.pop(qid, None)
        if entry is not None:  # else its batch is still running: it looks itself
            self._after(entry)

    def _finish(self, entry: SpoolEntry) -> None:
        qid = entry.envelope.queue_id
        self._done.pop(qid, None)
        self._attempts.pop(qid, None)
        self._finished.append(entry)
        self._wakeup.set()

    async def _remove_finished(self, loop: asyncio.AbstractEventLoop) -> None:
        gone, self._finished = self._finished, []
        if gone:
            await loop.run_in_executor(self._pool, self._remove, gone)

    def _remove(self, entries: list[SpoolEntry]) -> None:
        """The thread half of removing entries finished outside a batch (their
        recipients were held: relayed, their data files most likely linked nowhere)."""
        try:
            self.spool.remove(entries, reuse=True)
        except OSError as exc:  # left in the spool: the next start runs them again
            log.error("cannot remove %d finished spool entries: %s", len(entries), exc)

    def _retry(self, entry: SpoolEntry) -> None:
        qid = entry.envelope.queue_id
        n = self._attempts[qid] = self._attempts.get(qid, 0) + 1
        delay = min(self.retry_base * 2 ** (n - 1), self.retry_max)
        heapq.heappush(self._retries, (time.monotonic() + delay, qid, entry))

    def _run(
        self, entries: Sequence[SpoolEntry], jobs: Sequence[DeliveryJob]
    ) -> tuple[list[str], list[tuple[SpoolEntry, set[int]]]]:
        """The thread half: deliver, drop finished entries, log. Touches no runner
        state. Returns the queue IDs finished, and the entries that still have deferred
        or held recipients with the indexes finished now."""
        results = self.deliverer.deliver(jobs)
        finished: list[SpoolEntry] = []
        unfinished: list[tuple[SpoolEntry, set[int]]] = []
        for entry, outcomes in zip(entries, results, strict=True):
            if all(o.status not in _NOT_FINAL for o in outcomes):
                finished.append(entry)
            else:
                unfinished.append(
                    (entry, {o.index for o in outcomes if o.status not in _NOT_FINAL})
                )
        self.spool.remove(finished)
        if mail_log.isEnabledFor(logging.INFO):
            now = time.time()
            for job, outcomes in zip(jobs, results, strict=True):
                _log_outcomes(job, outcomes, now)
        return [e.envelope.queue_id for e in finished], unfinished


#: outcomes that keep the entry in the spool
_NOT_FINAL = frozenset({Status.DEFERRED, Status.HELD})


def _log_outcomes(job: DeliveryJob, outcomes: list[Outcome], now: float) -> None:
    delay = now - job.received_at
    for o in outcomes:
        if o.status is Status.HELD:
            continue  # its taker logs what becomes of it
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
