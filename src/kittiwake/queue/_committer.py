"""Group commit: many concurrent commits, few fsyncs, no blocking on the event loop.

Each commit is a job with two blocking halves: ``prepare`` (write and fsync this
message's data file) and ``flush`` (append the records of *many* jobs and fsync once).
Worker threads take jobs from a queue and run ``prepare``. The thread that finishes a
``prepare`` while no flush is running becomes the flusher: it flushes every prepared
job that is waiting, and keeps going while more arrive, then returns to ``prepare``
work. One fsync in ``flush`` therefore covers every job prepared before it started.

With ``inline_prepare`` (the spool's choice when ``prepare`` is only a write to the page
cache), ``prepare`` runs on the event loop in :meth:`GroupCommitter.commit` and the job
goes straight to the waiting list; a thread is woken only if no flush is running. Under
load a flush is nearly always running, so such a commit costs no thread hand-off at all.

A flush gathers first: when fewer than ``gather_size`` jobs are waiting and ``gather()``
says more commits are on their way (messages being received right now), the flusher
waits ``gather_delay`` once before it takes the batch, as PostgreSQL's ``commit_delay``
with ``commit_siblings``. Without it a flush started for nearly every message on its
own (20 sessions, two workers: 1.8 messages per ``syncfs`` on average, one in half the
flushes), and each ``syncfs`` walks the filesystem's dirty inodes and flushes the disk
cache. With a 1 ms wait, kittiwake took 8-12 % more messages per second (benchmarks/
README.md); a message that is alone pays no wait.

Results reach the event loop in bursts: one ``call_soon_threadsafe`` wakes the loop for
every job finished since the loop last drained, not one per job. Measured on the 2-core
dev box, this and the plain ``SimpleQueue`` handoff cost about half the CPU of
``loop.run_in_executor`` plus a condition variable per batch, which woke every waiting
thread on every flush.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommitter", "Job"]

T = TypeVar("T")


#: a message to the worker threads: flush what is waiting (no job of its own)
_FLUSH = object()

#: seconds a flush waits for more jobs when more are on their way (see the module doc)
GATHER_DELAY_S = 0.001
#: with this many jobs waiting, a flush does not wait
GATHER_SIZE = 4


class Job(Generic[T]):
    """One commit: the caller's payload and the loop future that reports its outcome."""

    __slots__ = ("fut", "loop", "payload")

    def __init__(self, payload: T, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]):
        self.payload = payload
        self.loop = loop
        self.fut = fut


def _own_error(exc: BaseException) -> BaseException:
    # Every job of a failed flush gets an exception; give each its own object (one
    # instance raised in many tasks would collect all their tracebacks).
    if isinstance(exc, OSError):
        copy = OSError(exc.errno, exc.strerror, exc.filename)
        copy.__cause__ = exc
        return copy
    err = RuntimeError(f"spool commit failed: {exc!r}")
    err.__cause__ = exc
    return err


class GroupCommitter(Generic[T]):
    """Runs commits in ``threads`` worker threads with a shared flush."""

    def __init__(
        self,
        threads: int,
        prepare: Callable[[T], None],
        flush: Callable[[Sequence[T]], None],
        abandon: Callable[[T], None],
        on_committed: Callable[[], object],
        name: str = "kw-spool",
        *,
        inline_prepare: bool = False,
        gather: Callable[[], int] | None = None,
        gather_delay: float = GATHER_DELAY_S,
        gather_size: int = GATHER_SIZE,
    ) -> None:
        """Args:
        threads: worker threads; about as many fsyncs run at once.
        prepare: blocking first half, per job; may raise.
        flush: blocking second half, for a batch; may raise (the whole batch fails).
        abandon: cleanup for a job whose ``prepare`` or ``flush`` failed.
        on_committed: called on the event loop after a burst with at least one success.
        name: thread name prefix.
        inline_prepare: run ``prepare`` on the caller's event loop (it must not block).
        gather: how many commits are on their way (called from the flushing thread;
            None: never wait for more).
        gather_delay: seconds a flush waits for them, once, when fewer than
            ``gather_size`` jobs are waiting.
        """
        self._prepare = prepare
        self._flush = flush
        self._abandon = abandon
        self._on_committed = on_committed
        self._inline_prepare = inline_prepare
        self._gather = gather
        self._gather_delay = gather_delay
        self._gather_size = gather_size
        self._jobs: queue.SimpleQueue[Job[T] | object | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting: list[Job[T]] = []  # prepared, not yet flushed
        self._flushing = False
        self._done_lock = threading.Lock()
        self._done: dict[asyncio.AbstractEventLoop, list[tuple[Job[T], BaseException | None]]] = {}
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    async def commit(self, payload: T) -> None:
        """Run both halves for ``payload``; return when its flush is durable.

        If the awaiting task is cancelled, the job still runs to its end.

        Raises:
            OSError: from ``prepare`` or ``flush``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        job = Job(payload, loop, fut)
        if not self._inline_prepare:
            self._jobs.put(job)
        else:
            try:
                self._prepare(payload)
            except BaseException:
                self._abandon(payload)
                raise
            with self._lock:
                self._waiting.append(job)
                wake = not self._flushing
                self._flushing = True
            if wake:  # else the running flush takes it in its next round
                self._jobs.put(_FLUSH)
        await fut

    def shutdown(self) -> None:
        """Finish the queued jobs and stop the threads (blocking)."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()

    # -- worker threads --------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job is _FLUSH:
                self._flush_waiting()  # _flushing was set for us
                continue
            assert isinstance(job, Job)
            try:
                self._prepare(job.payload)
            except BaseException as exc:
                self._abandon(job.payload)
                self._finish([(job, exc)])
                continue
            with self._lock:
                self._waiting.append(job)
                if self._flushing:
                    continue  # the flusher picks it up
                self._flushing = True
            self._flush_waiting()

    def _flush_waiting(self) -> None:
        gather = self._gather
        while True:
            # an unlocked look is enough: a job that arrives meanwhile is flushed anyway
            waiting = len(self._waiting)
            if gather is not None and 0 < waiting < self._gather_size and gather() > 0:
                time.sleep(self._gather_delay)
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._flushing = False
                    return
            try:
                self._flush([job.payload for job in batch])
            except BaseException as exc:
                for job in batch:
                    self._abandon(job.payload)
                self._finish([(job, _own_error(exc)) for job in batch])
            else:
                self._finish([(job, None) for job in batch])

    def _finish(self, results: list[tuple[Job[T], BaseException | None]]) -> None:
        wake: list[asyncio.AbstractEventLoop] = []
        with self._done_lock:
            for job, exc in results:
                pending = self._done.get(job.loop)
                if pending is None:
                    pending = self._done[job.loop] = []
                    wake.append(job.loop)
                pending.append((job, exc))
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._done_lock:
                    self._done.pop(loop, None)

    # -- event loop ------------------------------------------------------------

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._done_lock:
            results = self._done.pop(loop, [])
        committed = False
        for job, exc in results:
            if exc is None:
                committed = True
                if not job.fut.done():
                    job.fut.set_result(None)
            elif not job.fut.done():
                job.fut.set_exception(exc)
        if committed:
            # Once per burst: a committed message is delivered even if its session
            # was cancelled while it waited.
            self._on_committed()
