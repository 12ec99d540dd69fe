"""A forward's remote targets leave as a new mail in the spool (James's sendMail), made
once whatever crashes: in-process, with a real spool on an event loop in a thread, a
real journal and real Maildirs. Each "restart" is a new deliverer over the same DATA."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.delivery.base import DeliveryJob, Status, Target
from kittiwake.mailet.enqueue import Enqueuer, parse_parent
from kittiwake.mailet.matchers import SENT_BY_MAILET
from kittiwake.policy.rewrite import MappingKind, normalize_mapping
from kittiwake.queue._envelope import Envelope
from kittiwake.queue.spool import Spool, SpoolEntry, list_spool

from .helpers import MESSAGE, Harness


class SpoolThread:
    """An open spool whose commits run on an event loop in a thread."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.spool = Spool(root, threads=2)
        self.spool.open()

    async def _put(self, message: bytes, env: Envelope) -> str:
        writer = self.spool.begin()
        writer.write(message)
        await writer.commit(dataclasses.replace(env, queue_id=writer.queue_id))
        return writer.queue_id

    def put(self, message: bytes, env: Envelope) -> str:
        return asyncio.run_coroutine_threadsafe(self._put(message, env), self.loop).result(30)

    def close(self) -> None:
        self.spool.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[SpoolThread]:
    s = SpoolThread(tmp_path / "spool")
    yield s
    s.close()


def harness(tmp_path: Path, spool: SpoolThread) -> Harness:
    h = Harness(tmp_path)
    h.store.add_mapping(normalize_mapping(MappingKind.FORWARD, "bob@a.test", "bob@far.test"))
    h.store.add_mapping(normalize_mapping(MappingKind.FORWARD, "bob@a.test", "bob@a.test"))
    h.deliverer.attach_spool(spool.spool.root, spool.put)
    return h


def job_of(entry: SpoolEntry, *, recovered: bool = False) -> DeliveryJob:
    env = entry.envelope
    targets = tuple(Target(i, r, None) for i, r in enumerate(env.recipients))
    return DeliveryJob(
        env.queue_id, entry.data_path, env.received_at, env.size, recovered, targets, env
    )


def receive(spool: SpoolThread, rcpts: list[str]) -> DeliveryJob:
    env = Envelope("", "carol@remote.test", tuple(rcpts), "192.0.2.1", "c.test", time.time(),
                   "ESMTP", len(MESSAGE))  # fmt: skip
    qid = spool.put(MESSAGE, env)
    (entry,) = [e for e in spool.spool.take_ready() if e.envelope.queue_id == qid]
    return job_of(entry)


def copies(spool: SpoolThread, parent: str) -> list[SpoolEntry]:
    out = []
    for entry in list_spool(spool.spool.root):
        found = parse_parent(entry.envelope.parent)
        if found is not None and found[0] == parent:
            out.append(entry)
    return out


def test_remote_target_leaves_as_a_new_mail(tmp_path: Path, spool: SpoolThread) -> None:
    h = harness(tmp_path, spool)
    job = receive(spool, ["bob@a.test", "alice@a.test"])
    (out,) = h.run(job)
    assert [o.status for o in out] == [Status.SENT, Status.SENT]
    assert len(h.mailbox("bob@a.test")) == 1 and len(h.mailbox("alice@a.test")) == 1
    assert not h.repo("relay-denied") and not h.repo("outgoing")
    (copy,) = copies(spool, job.queue_id)
    assert copy.envelope.recipients == ("bob@far.test",)
    assert copy.envelope.sender == "carol@remote.test"
    assert copy.envelope.queue_id != job.queue_id
    assert b"Bcc:" not in Path(copy.data_path).read_bytes()  # as the transport left it
    # the copy: SentByMailet, relayed by the default transport
    (out,) = h.run(job_of(copy))
    assert out[0].status is Status.SENT
    (key,) = h.repo("outgoing")
    stored = h.deliverer.context.repositories.get("outgoing").load(key)
    assert stored.recipients == ["bob@far.test"] and stored.attributes[SENT_BY_MAILET]


def test_rerun_after_the_record_makes_no_second_copy(tmp_path: Path, spool: SpoolThread) -> None:
    h = harness(tmp_path, spool)
    job = receive(spool, ["bob@a.test"])
    h.run(job)
    h2 = harness(tmp_path, spool)  # restarted: the parent is still in the spool
    (out,) = h2.run(dataclasses.replace(job, recovered=True))
    assert out[0].status is Status.SENT
    assert len(copies(spool, job.queue_id)) == 1
    assert len(h2.mailbox("bob@a.test")) == 1


def test_crash_between_spooling_and_recording(
    tmp_path: Path, spool: SpoolThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is committed, the record of it is not (as if the process died there):
    the copy is held; the parent, run again, finds it instead of making another."""
    h = harness(tmp_path, spool)

    def fails(self: Enqueuer, *args: object) -> None:
        raise OSError(5, "journal unwritable")

    with monkeypatch.context() as m:
        m.setattr(Enqueuer, "_record", fails)
        job = receive(spool, ["bob@a.test"])
        (out,) = h.run(job)
    assert out[0].status is Status.DEFERRED  # the parent must run again
    (copy,) = copies(spool, job.queue_id)
    h2 = harness(tmp_path, spool)  # restarted
    (held,) = h2.run(job_of(copy, recovered=True))
    assert held[0].status is Status.DEFERRED and held[0].detail == "held for its parent"
    assert not h2.repo("outgoing")
    (out,) = h2.run(dataclasses.replace(job, recovered=True))
    assert out[0].status is Status.SENT
    assert [c.envelope.queue_id for c in copies(spool, job.queue_id)] == [copy.envelope.queue_id]
    assert len(h2.mailbox("bob@a.test")) == 1
    (out,) = h2.run(job_of(copy, recovered=True))  # released by the record
    assert out[0].status is Status.SENT and len(h2.repo("outgoing")) == 1


def test_copy_is_released_when_its_parent_is_gone(tmp_path: Path, spool: SpoolThread) -> None:
    h = harness(tmp_path, spool)
    job = receive(spool, ["bob@a.test"])
    h.run(job)
    (copy,) = copies(spool, job.queue_id)
    os.unlink(job.data_path)  # the parent finished (the spool unlinks its data file)
    h2 = harness(tmp_path, spool)
    (out,) = h2.run(job_of(copy, recovered=True))
    assert out[0].status is Status.SENT and len(h2.repo("outgoing")) == 1


def test_unmapped_remote_recipient_is_still_relay_denied(
    tmp_path: Path, spool: SpoolThread
) -> None:
    h = harness(tmp_path, spool)
    job = receive(spool, ["x@far.test", "bob@a.test"])
    (out,) = h.run(job)
    assert [o.status for o in out] == [Status.FAILED, Status.SENT]
    assert len(h.repo("relay-denied")) == 1
    (copy,) = copies(spool, job.queue_id)  # only the administrator's forward leaves
    assert copy.envelope.recipients == ("bob@far.test",)
