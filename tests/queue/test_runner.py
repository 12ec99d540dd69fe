"""The spool runner: delivers at once, journals, retries, recovers, never twice —
also across processes and through SIGKILL."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from spool_helpers import body, commit, spool_files

from kittiwake.delivery import Journal, MaildirDeliverer, Status, maildir_name
from kittiwake.delivery.base import DeliveryJob, Outcome
from kittiwake.queue import Spool, SpoolRunner

SRC = str(Path(__file__).resolve().parents[2] / "src")
WORKER = str(Path(__file__).with_name("spool_worker.py"))
TOKEN = re.compile(rb"X-Token: (\S+)")


def users(*names: str) -> Callable[[str], str | None]:
    known = {n.lower() for n in names}
    return lambda rcpt: rcpt.lower() if rcpt.lower() in known else None


class Node:
    """Spool + journal + deliverer + runner on one DATA directory."""

    def __init__(self, data: Path, resolve: Callable[[str], str | None], **kw: float) -> None:
        self.data = data
        self.spool = Spool(data / "spool")
        self.spool.open()
        self.journal = Journal(data / "journal")
        self.deliverer = MaildirDeliverer(data / "mail", self.journal, hostname="mx.test")
        self.runner = SpoolRunner(self.spool, self.deliverer, resolve, 2, **kw)  # type: ignore[arg-type]

    async def stop(self) -> None:
        await self.runner.stop()
        self.spool.close()
        self.journal.close()


def mailbox(data: Path, address: str) -> list[bytes]:
    local, _, domain = address.partition("@")
    box = data / "mail" / domain / local
    out = []
    for sub in ("new", "cur"):
        if (box / sub).exists():
            out += [p.read_bytes() for p in sorted((box / sub).iterdir())]
    return out


def tokens(data: Path, address: str) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for msg in mailbox(data, address):
        m = TOKEN.search(msg)
        assert m is not None
        found[m.group(1).decode()] += 1
    return found


def test_delivers_journals_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kittiwake.mail")

    async def go() -> list[str]:
        node = Node(tmp_path, users("alice@local.test", "bob@local.test"), sweep_interval=60)
        await node.runner.start()
        ids = [
            await commit(node.spool, body(f"m{i}"), ["Alice@local.test", "bob@local.test"])
            for i in range(5)
        ]
        ghost = await commit(node.spool, body("ghost"), ["ghost@local.test"])
        await node.runner.wait_idle(10)
        await node.stop()
        return [*ids, ghost]

    *ids, ghost = asyncio.run(go())
    assert sorted(tokens(tmp_path, "alice@local.test")) == [f"m{i}" for i in range(5)]
    assert len(mailbox(tmp_path, "bob@local.test")) == 5
    assert spool_files(tmp_path / "spool") == []
    journal = Journal(tmp_path / "journal")
    found = journal.final_statuses([*ids, ghost], time.time() - 60)
    assert found[(ids[0], 0)] is Status.SENT and found[(ids[0], 1)] is Status.SENT
    assert found[(ghost, 0)] is Status.FAILED
    lines = [r.getMessage() for r in caplog.records if r.name == "kittiwake.mail"]
    sent = [ln for ln in lines if ln.startswith(f"{ids[0]}: to=<Alice@local.test>")]
    assert len(sent) == 1
    assert re.fullmatch(
        rf"{ids[0]}: to=<Alice@local.test>, status=sent, delay=\d+\.\d\d, dsn=2\.0\.0, "
        rf"mailbox={re.escape(str(tmp_path))}/mail/local\.test/alice",
        sent[0],
    )
    assert any(f"{ghost}: to=<ghost@local.test>, status=failed" in ln for ln in lines)
    assert not any("X-Token" in ln or "xxxx" in ln for ln in lines)  # never content


def test_wake_delivers_at_once(tmp_path: Path) -> None:
    async def go() -> float:
        node = Node(tmp_path, users("alice@local.test"), sweep_interval=3600)
        await node.runner.start()
        await asyncio.sleep(0.05)  # the workers are idle, waiting
        t0 = time.monotonic()
        await commit(node.spool, body("fast"))
        box = tmp_path / "mail" / "local.test" / "alice" / "new"
        while not (box.exists() and any(box.iterdir())):
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - t0
        await node.stop()
        return elapsed

    assert asyncio.run(go()) < 0.5


def test_deferred_then_retried(tmp_path: Path) -> None:
    blocker = tmp_path / "mail" / "local.test" / "alice"

    async def go() -> None:
        blocker.parent.mkdir(parents=True)
        blocker.write_text("in the way")  # the mailbox cannot be created: deferred
        node = Node(tmp_path, users("alice@local.test", "bob@local.test"), retry_base=0.05)
        await node.runner.start()
        qid = await commit(node.spool, body("retry"), ["alice@local.test", "bob@local.test"])
        await node.runner.wait_idle(10)
        assert len(mailbox(tmp_path, "bob@local.test")) == 1
        assert node.spool.pending == 1  # alice still to do
        blocker.unlink()
        for _ in range(200):
            if node.spool.pending == 0:
                break
            await asyncio.sleep(0.02)
        assert node.spool.pending == 0
        await node.stop()
        # bob was not delivered a second time by the retry.
        assert len(mailbox(tmp_path, "bob@local.test")) == 1
        assert len(mailbox(tmp_path, "alice@local.test")) == 1
        statuses = Journal(tmp_path / "journal").final_statuses([qid], time.time() - 60)
        assert statuses == {(qid, 0): Status.SENT, (qid, 1): Status.SENT}

    asyncio.run(go())


def test_resolver_error_defers(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(rcpt: str) -> str | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is locked")
        return rcpt

    async def go() -> None:
        node = Node(tmp_path, flaky, retry_base=0.05)
        await node.runner.start()
        await commit(node.spool, body("flaky"))
        for _ in range(200):
            if node.spool.pending == 0:
                break
            await asyncio.sleep(0.02)
        await node.stop()

    asyncio.run(go())
    assert len(mailbox(tmp_path, "alice@local.test")) == 1


def test_recovery_at_start_delivers_once(tmp_path: Path) -> None:
    async def go() -> None:
        node = Node(tmp_path, users("alice@local.test"))
        for i in range(10):  # committed, never delivered: the runner was not started
            await commit(node.spool, body(f"r{i}"))
        await node.stop()
        node = Node(tmp_path, users("alice@local.test"))
        await node.runner.start()
        await node.runner.wait_idle(10)
        await node.stop()

    asyncio.run(go())
    found = tokens(tmp_path, "alice@local.test")
    assert sorted(found) == sorted(f"r{i}" for i in range(10))
    assert set(found.values()) == {1}
    assert spool_files(tmp_path / "spool") == []


def test_crash_between_link_and_journal_is_not_delivered_twice(tmp_path: Path) -> None:
    async def go() -> None:
        node = Node(tmp_path, users("alice@local.test", "bob@local.test"))
        await commit(node.spool, body("once"), ["alice@local.test", "bob@local.test"])
        await commit(node.spool, body("moved"), ["alice@local.test"])
        [e1, e2] = node.spool.take_ready()
        # The crash: both linked into alice's Maildir, nothing journalled, spool intact;
        # a reader has already moved the second one to cur/.
        for e in (e1, e2):
            env = e.envelope
            box = tmp_path / "mail" / "local.test" / "alice"
            node.deliverer._maildir("alice@local.test")
            name = maildir_name(env.queue_id, env.received_at, env.size, "mx.test")
            os.link(e.data_path, box / "new" / name)
            if e is e2:
                os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")
        await node.stop()
        node = Node(tmp_path, users("alice@local.test", "bob@local.test"))
        await node.runner.start()
        await node.runner.wait_idle(10)
        await node.stop()

    asyncio.run(go())
    assert tokens(tmp_path, "alice@local.test") == {"once": 1, "moved": 1}
    assert tokens(tmp_path, "bob@local.test") == {"once": 1}
    assert spool_files(tmp_path / "spool") == []


def test_runner_opens_and_closes_the_spool(tmp_path: Path) -> None:
    async def go() -> None:
        spool = Spool(tmp_path / "spool")
        deliverer = MaildirDeliverer.in_data_dir(tmp_path, hostname="mx.test")
        runner = SpoolRunner(spool, deliverer, users("alice@local.test"))
        await runner.start()  # opens the spool: recovery happens here
        assert spool.is_open
        await commit(spool, body("owned"))
        await runner.wait_idle(10)
        await runner.stop()
        assert not spool.is_open
        deliverer.close()

    asyncio.run(go())
    assert tokens(tmp_path, "alice@local.test") == {"owned": 1}


def test_stop_finishes_in_flight(tmp_path: Path) -> None:
    async def go() -> None:
        node = Node(tmp_path, users("alice@local.test"))
        await node.runner.start()
        await asyncio.gather(*(commit(node.spool, body(f"s{i}")) for i in range(50)))
        await node.runner.stop()  # no wait_idle: whatever started finishes
        delivered = len(mailbox(tmp_path, "alice@local.test"))
        assert delivered + node.spool.pending == 50
        node.spool.close()
        node.journal.close()
        node = Node(tmp_path, users("alice@local.test"))
        await node.runner.start()
        await node.runner.wait_idle(10)
        await node.stop()

    asyncio.run(go())
    found = tokens(tmp_path, "alice@local.test")
    assert len(found) == 50 and set(found.values()) == {1}


# -- several processes, SIGKILL --------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _acked(out: str) -> dict[str, str]:
    pairs = (line.split() for line in out.splitlines() if line.strip())
    return {token: qid for token, qid in pairs}


def test_two_processes_share_one_spool(tmp_path: Path) -> None:
    # An orphan first: a process that committed 30 messages and died without delivering.
    async def orphan() -> list[str]:
        spool = Spool(tmp_path / "spool")
        spool.open()
        ids = [await commit(spool, body(f"orphan-{i}")) for i in range(30)]
        spool.close()
        return ids

    asyncio.run(orphan())
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path), name, "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for name in ("p1", "p2")
    ]
    acked: dict[str, str] = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        acked |= _acked(out)
    assert len(acked) == 600
    found = tokens(tmp_path, "alice@local.test")
    expected = set(acked) | {f"orphan-{i}" for i in range(30)}
    assert set(found) == expected
    twice = {t: n for t, n in found.items() if n > 1}
    assert twice == {}
    assert spool_files(tmp_path / "spool") == []


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    acked: dict[str, str] = {}
    for cycle in range(4):
        proc = subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path), f"c{cycle}", "100000", "--hold"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        time.sleep(0.6 + rng.random())
        proc.send_signal(signal.SIGKILL)
        out, _err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        acked |= _acked(out)
    # Start again: recovery drains the spool.
    done = subprocess.run(
        [sys.executable, WORKER, str(tmp_path), "drain", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(acked) > 200, "the load did not get going"
    print(f"{len(acked)} acknowledged")
    found = tokens(tmp_path, "alice@local.test")
    missing = [t for t in acked if not found[t]]
    assert missing == [], f"{len(missing)} acknowledged messages lost"
    twice = {t: n for t, n in found.items() if n > 1}
    assert twice == {}
    assert spool_files(tmp_path / "spool") == []


class Holding:
    """A deliverer that delivers local recipients into Maildirs and *holds* the others,
    as RemoteDelivery's first attempt from the spool does: each hold is registered
    with the runner and released by the test."""

    def __init__(self, node: Node, is_local: Callable[[str], bool], early: bool = False) -> None:
        self.node = node
        self.is_local = is_local
        self.early = early  # release each hold before the batch returns (a fast remote)
        self.held: list[tuple[str, list[int]]] = []
        self.runs: collections.Counter[tuple[str, int]] = collections.Counter()
        self.loop = asyncio.get_running_loop()

    def deliver(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
        local = [
            DeliveryJob(
                j.queue_id,
                j.data_path,
                j.received_at,
                j.size,
                j.recovered,
                tuple(t for t in j.targets if self.is_local(t.recipient)),
            )
            for j in jobs
        ]
        results = self.node.deliverer.deliver(local)
        out: list[list[Outcome]] = []
        for job, outcomes in zip(jobs, results, strict=True):
            away = [t for t in job.targets if not self.is_local(t.recipient)]
            for t in job.targets:
                self.runs[(job.queue_id, t.index)] += 1
            if away:
                self.node.runner.holds.hold(job.queue_id)
                indexes = [t.index for t in away]
                if self.early:
                    released = threading.Event()

                    def release(
                        qid: str = job.queue_id,
                        ix: list[int] = indexes,
                        ev: threading.Event = released,
                    ) -> None:
                        self.node.runner.holds.release(qid, ix, done=True)
                        ev.set()

                    self.loop.call_soon_threadsafe(release)
                    assert released.wait(5)
                else:
                    self.held.append((job.queue_id, indexes))
            out.append(
                list(outcomes)
                + [Outcome(t.index, t.recipient, Status.HELD, "", "", "away") for t in away]
            )
        return out


async def settle(node: Node, done: Callable[[], bool]) -> None:
    for _ in range(200):
        await node.runner.wait_idle(10)
        if done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not settled")


def test_held_recipients_keep_the_entry_until_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A held recipient (RemoteDelivery's first attempt from the spool) keeps its spool
    entry, parked (never retried meanwhile, never logged as delivered); released as done,
    the entry goes; released as not done, only that recipient runs again (the local
    one is not delivered twice); a stop leaves a parked entry for the next start."""
    caplog.set_level(logging.INFO, logger="kittiwake.mail")

    def is_local(rcpt: str) -> bool:
        return rcpt.lower().endswith("@local.test")

    async def go() -> tuple[str, str, str]:
        node = Node(tmp_path, users("alice@local.test"), sweep_interval=3600, retry_base=0.01)
        holding = Holding(node, is_local)
        node.runner.deliverer = holding
        await node.runner.start()
        mixed = await commit(node.spool, body("mixed"), ["alice@local.test", "bob@remote.test"])
        only = await commit(node.spool, body("relay"), ["carol@remote.test"])
        kept = await commit(node.spool, body("kept"), ["dave@remote.test"])
        await settle(node, lambda: len(node.runner.parked) == 3)
        await asyncio.sleep(0.2)  # no retry timer may spin on them
        await node.runner.wait_idle(10)
        assert set(node.runner.parked) == {mixed, only, kept}
        assert len(spool_files(tmp_path / "spool")) == 3
        assert max(holding.runs.values()) == 1
        held = dict(holding.held)
        holding.held.clear()

        node.runner.holds.release(only, held[only], done=True)
        node.runner.holds.release(mixed, held[mixed], done=False)
        await settle(node, lambda: bool(holding.held))
        assert holding.held == [(mixed, held[mixed])]  # bob again, on his own
        assert holding.runs[(mixed, 0)] == 1 and holding.runs[(mixed, 1)] == 2
        node.runner.holds.release(mixed, held[mixed], done=True)
        await settle(node, lambda: set(node.runner.parked) == {kept})
        await settle(node, lambda: len(spool_files(tmp_path / "spool")) == 1)
        assert len(node.runner.holds) == 1  # kept's only
        await node.stop()  # kept is still held: it stays in the spool
        return mixed, only, kept

    _, _, kept = asyncio.run(go())
    assert sorted(tokens(tmp_path, "alice@local.test")) == ["mixed"]
    names = spool_files(tmp_path / "spool")
    assert len(names) == 1 and kept in names[0]
    lines = [r.getMessage() for r in caplog.records if r.name == "kittiwake.mail"]
    assert any("alice@local.test" in ln for ln in lines)
    assert not any("remote.test" in ln for ln in lines)  # its taker logs what happens

    async def again() -> None:  # a restart: the parked entry runs again, and is held
        node = Node(tmp_path, users("alice@local.test"), sweep_interval=3600)
        holding = Holding(node, is_local, early=True)
        node.runner.deliverer = holding
        await node.runner.start()
        await settle(node, lambda: not spool_files(tmp_path / "spool"))
        assert list(holding.runs) == [(kept, 0)]
        assert node.runner.parked == {} and len(node.runner.holds) == 0
        await node.stop()

    asyncio.run(again())
    assert spool_files(tmp_path / "spool") == []
    assert sorted(tokens(tmp_path, "alice@local.test")) == ["mixed"]


def test_a_hold_released_before_its_batch_returns(tmp_path: Path) -> None:
    """A remote server faster than the rest of the batch: the release is taken in when
    the batch's result comes, and the entry goes at once (nothing parked, no retry)."""

    async def go() -> None:
        node = Node(tmp_path, users("alice@local.test"), sweep_interval=3600)
        holding = Holding(node, lambda r: r.endswith("@local.test"), early=True)
        node.runner.deliverer = holding
        await node.runner.start()
        qids = [
            await commit(node.spool, body(f"m{i}"), ["alice@local.test", f"x{i}@remote.test"])
            for i in range(20)
        ]
        await settle(node, lambda: not spool_files(tmp_path / "spool"))
        assert node.runner.parked == {} and len(node.runner.holds) == 0
        assert set(holding.runs.values()) == {1}
        assert {q for q, _ in holding.runs} == set(qids)
        await node.stop()

    asyncio.run(go())
    assert len(tokens(tmp_path, "alice@local.test")) == 20


def test_a_hold_on_an_entry_that_finished_anyway_is_forgotten(tmp_path: Path) -> None:
    """A hold taken on an entry whose outcomes came out final all the same (a mail the
    container gave up on after RemoteDelivery took it): the entry goes, the hold is
    forgotten, and its late release changes nothing."""

    async def go() -> None:
        node = Node(tmp_path, users("alice@local.test"), sweep_interval=3600)

        class GivesUp:
            def deliver(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
                for job in jobs:
                    node.runner.holds.hold(job.queue_id)
                return [
                    [Outcome(t.index, t.recipient, Status.FAILED, "5.3.0", "", "given up")]
                    for job in jobs
                    for t in job.targets
                ]

        node.runner.deliverer = GivesUp()  # type: ignore[assignment]
        await node.runner.start()
        qid = await commit(node.spool, body("given-up"), ["bob@remote.test"])
        await settle(node, lambda: not spool_files(tmp_path / "spool"))
        assert len(node.runner.holds) == 0 and node.runner.parked == {}
        node.runner.holds.release(qid, [0], done=True)  # late: ignored
        assert len(node.runner.holds) == 0
        await node.stop()

    asyncio.run(go())
