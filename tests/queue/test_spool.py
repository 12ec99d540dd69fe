"""The durable spool: commit, abort, recovery, group commit, disk full, big messages."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from spool_helpers import body, commit, spool_files, tiny_tmpfs

from kittiwake.queue import Envelope, Spool, is_queue_id, list_spool, queue_id_slot
from kittiwake.queue import spool as spool_module
from kittiwake.queue.spool import SYNC_MODES

T = TypeVar("T")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize("sync", SYNC_MODES)
def test_commit_then_recover_after_restart(tmp_path: Path, sync: str) -> None:
    root = tmp_path / "spool"
    with Spool(root, sync=sync) as spool:
        assert spool.sync == sync
        data = body("t1")
        qid = run(commit(spool, data, ["a@local.test", "b@local.test"]))
        assert is_queue_id(str(qid))
        [entry] = spool.take_ready()
        assert entry.recovered is False
        assert entry.envelope.queue_id == qid
        assert Path(entry.data_path).read_bytes() == data
        assert stat.S_IMODE(os.stat(entry.data_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    # Not delivered: still there for the next start, marked as recovered.
    with Spool(root) as spool:
        [entry] = spool.take_ready()
        assert entry.recovered is True
        env = entry.envelope
        assert env.queue_id == qid
        assert env.recipients == ("a@local.test", "b@local.test")
        assert env.sender == "sender@remote.test"
        assert (env.client_address, env.helo, env.protocol) == ("192.0.2.1", "client.test", "ESMTP")
        assert env.size == len(data)
        assert Path(entry.data_path).read_bytes() == data
        spool.remove([entry])
        assert spool.pending == 0
    assert spool_files(root) == []
    # An idle, empty spool keeps only the slot's lock file (with its queue-ID floor).
    assert [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()] == ["00/lock"]


def test_abort_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", memory_threshold=1024) as spool:
        writer = spool.begin()
        writer.write(b"x" * 5000)  # spilled to its file
        assert os.path.exists(writer.path)
        writer.abort()
        writer.abort()
        assert not os.path.exists(writer.path)
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        small = spool.begin()
        small.write(b"tiny")  # never reached the disk
        small.abort()
        assert spool.take_ready() == []
    assert spool_files(tmp_path / "spool") == []


def test_abort_after_commit_keeps_the_message(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:

        async def go() -> None:
            writer = spool.begin()
            writer.write(body("keep"))
            await writer.commit(
                Envelope(writer.queue_id, "", ("a@x.test",), "::1", "h", 0.0, "LMTP", writer.size)
            )
            writer.abort()
            with pytest.raises(RuntimeError):
                await writer.commit(
                    Envelope(writer.queue_id, "", (), "::1", "h", 0.0, "LMTP", writer.size)
                )

        run(go())
        [entry] = spool.take_ready()
        assert os.path.exists(entry.data_path)
        assert entry.envelope.sender == ""


def test_receiving_counts_messages_until_commit_or_abort(tmp_path: Path) -> None:
    # the flushing thread waits for these to commit (group commit's gather)
    with Spool(tmp_path / "spool") as spool:

        def envelope(qid: str, size: int) -> Envelope:
            return Envelope(qid, "", ("a@x.test",), "::1", "h", 0.0, "SMTP", size)

        async def go() -> None:
            a, b, c = spool.begin(), spool.begin(), spool.begin()
            assert spool.receiving == 3
            a.write(body("a"))
            await a.commit(envelope(a.queue_id, a.size))
            assert spool.receiving == 2
            a.abort()  # after a commit: nothing changes
            b.abort()
            b.abort()
            assert spool.receiving == 1
            with pytest.raises(ValueError):  # refused before it began: still receiving
                await c.commit(envelope(a.queue_id, c.size))
            assert spool.receiving == 1
            c.abort()
            assert spool.receiving == 0

        run(go())


def test_reserve_gives_ids_not_counted_as_receiving(tmp_path: Path) -> None:
    # for LMTP's direct delivery: a queue ID and a path, never committed here
    with Spool(tmp_path / "spool") as spool:
        reserved = [spool.reserve() for _ in range(3)]
        writer = spool.begin()
        assert spool.receiving == 1
        ids = [qid for qid, _ in reserved] + [writer.queue_id]
        assert len(set(ids)) == 4 and all(is_queue_id(q) for q in ids)
        assert all(path.endswith(f"/{qid}") for qid, path in reserved)
        writer.abort()
        assert spool.receiving == 0


def test_envelope_must_match_writer(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:

        async def go() -> None:
            writer = spool.begin()
            writer.write(b"abc")
            with pytest.raises(ValueError):
                await writer.commit(Envelope("0" * 12, "", (), "", "", 0.0, "SMTP", 3))
            # The size is the writer's: what is in the file, trace headers included.
            await writer.commit(Envelope(writer.queue_id, "", (), "", "", 0.0, "SMTP", 999))

        run(go())
        [entry] = spool.take_ready()
        assert entry.envelope.size == 3


def test_ensure_file_for_hooks(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:

        async def go() -> None:
            writer = spool.begin()
            writer.write(b"head\n")
            path = writer.ensure_file()
            assert Path(path).read_bytes() == b"head\n"
            writer.write(b"body\n")
            await writer.commit(
                Envelope(writer.queue_id, "", ("a@x.test",), "", "", 0.0, "SMTP", writer.size)
            )
            assert Path(path).read_bytes() == b"head\nbody\n"

        run(go())


def test_entry_carries_the_header_block_it_was_received_with(tmp_path: Path) -> None:
    """The delivery thread's header matchers read the header from memory (no open/read/
    close of the data file again); a recovered entry, a header block longer than the
    limit and a spilled file have none, and are read from the file."""
    message = b"Subject: one\r\nX-A: b\r\n\r\nbody\r\n\r\nmore\r\n"
    long_header = b"X-Long: " + b"a" * 20000 + b"\r\n\r\nbody\r\n"
    with Spool(tmp_path / "spool") as spool:
        run(commit(spool, message, ["a@local.test"]))
        run(commit(spool, b"\r\nno header\r\n", ["a@local.test"]))
        run(commit(spool, long_header, ["a@local.test"]))
        heads = [e.head for e in spool.take_ready()]
        assert heads == [b"Subject: one\r\nX-A: b\r\n\r\n", b"\r\n", None]
    with Spool(tmp_path / "spool") as spool:
        assert [e.head for e in spool.take_ready()] == [None, None, None]


def test_relayed_data_files_are_written_again_after_a_barrier(tmp_path: Path) -> None:
    """A relayed message's data file is kept and written over (no inode freed or
    allocated: ext4's recently-freed scan), but only after a flush barrier begun after
    the rename that took it out of the queue: the next commit, which has no such
    barrier behind it, gets a new file."""
    root = tmp_path / "spool"
    sync = "filesystem"
    with Spool(root, sync=sync) as spool:
        run(commit(spool, body("one")))
        [one] = spool.take_ready()
        inode = os.stat(one.data_path).st_ino
        spool.remove([one], reuse=True)
        assert not os.path.exists(one.data_path)
        assert [p.name for p in (root / "00").glob("free.*")] == ["free.0"]
        run(commit(spool, body("two")))  # its barrier makes free.0 durably free
        [two] = spool.take_ready()
        assert os.stat(two.data_path).st_ino != inode
        three_data = body("three", size=600)  # shorter: the old bytes must not show
        run(commit(spool, three_data, ["c@remote.test"]))
        [three] = spool.take_ready()
        assert os.stat(three.data_path).st_ino == inode
        assert Path(three.data_path).read_bytes() == three_data
        assert list((root / "00").glob("free.*")) == []
    with Spool(root, sync=sync) as spool:  # what a restart finds: two, three
        found = {e.envelope.queue_id: Path(e.data_path).read_bytes() for e in spool.take_ready()}
        assert found == {two.envelope.queue_id: body("two"), three.envelope.queue_id: three_data}
        spool.remove(spool.take_ready())


def test_no_data_file_is_kept_with_file_sync(tmp_path: Path) -> None:
    """With sync="file" a data file is one O_DSYNC write into a new file: nothing to
    write over."""
    root = tmp_path / "spool"
    with Spool(root, sync="file") as spool:
        run(commit(spool, body("one")))
        spool.remove(spool.take_ready(), reuse=True)
        assert list((root / "00").iterdir()) != []
        assert list((root / "00").glob("free.*")) == []
        assert spool_files(root) == []


def test_a_linked_data_file_is_never_written_again(tmp_path: Path) -> None:
    """A data file linked into a mailbox (or a repository) is that mailbox's copy:
    unlinked from the spool as usual even when reuse is asked for."""
    root = tmp_path / "spool"
    mailbox = tmp_path / "mailbox-copy"
    with Spool(root) as spool:
        data = body("kept")
        run(commit(spool, data))
        [entry] = spool.take_ready()
        os.link(entry.data_path, mailbox)
        spool.remove([entry], reuse=True)
        assert list((root / "00").glob("free.*")) == []
        for token in ("a", "b", "c"):
            run(commit(spool, body(token)))
        spool.remove(spool.take_ready(), reuse=True)
        assert mailbox.read_bytes() == data
        assert os.stat(mailbox).st_nlink == 1
        assert len(list((root / "00").glob("free.*"))) == 3
    # closed: the kept files are gone, the idle slot holds only its lock file
    assert [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()] == ["00/lock"]


def test_kept_files_of_a_dead_process_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root):
        pass
    (root / "00" / "free.7").write_bytes(b"an old message")
    with Spool(root) as spool:
        assert spool.take_ready() == []
        assert not (root / "00" / "free.7").exists()


def test_uncommitted_data_is_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root, memory_threshold=10) as spool:
        writer = spool.begin()
        writer.write(b"x" * 100)  # on disk, never committed: as if the server died here
        run(commit(spool, body("kept")))
        orphan = writer.path
    assert os.path.exists(orphan)
    with Spool(root) as spool:
        assert [e.envelope.queue_id for e in spool.take_ready()] != []
        assert not os.path.exists(orphan)


def test_torn_record_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as spool:
        first = run(commit(spool, body("one")))
        slot_dir = root / f"{spool.slot:02X}"
    [segment] = sorted(slot_dir.glob("log.*"))
    with open(segment, "ab") as f:
        f.write(b'\n{"v":1,"id":"0000')  # an append cut short by a crash
    with Spool(root) as spool:
        second = run(commit(spool, body("two")))  # appended after the torn bytes
    with Spool(root) as spool:
        assert sorted(e.envelope.queue_id for e in spool.take_ready()) == sorted([first, second])


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:

        async def go() -> list[str]:
            return list(await asyncio.gather(*(commit(spool, body(f"m{i}")) for i in range(200))))

        ids = run(go())
        assert len(set(ids)) == 200
        assert len(spool.take_ready()) == 200
        assert spool.flushes < 200, "every commit had its own log fsync"


def test_two_spools_take_two_slots(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as a, Spool(root) as b:
        assert a.slot != b.slot
        qa, qb = run(commit(a, body("a"))), run(commit(b, body("b")))
        assert queue_id_slot(str(qa)) == a.slot
        assert queue_id_slot(str(qb)) == b.slot


def test_dead_slot_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as survivor:
        other = Spool(root)
        other.open()
        ids = {run(commit(other, body(f"o{i}"))) for i in range(5)}
        other_slot = other.slot
        other.close()  # gone, with five messages undelivered
        assert len(list_spool(root)) == 5
        assert survivor.adopt_orphans() == 5
        entries = survivor.take_ready()
        assert {e.envelope.queue_id for e in entries} == ids
        assert all(e.recovered for e in entries)
        assert survivor.adopt_orphans() == 0  # already ours
        survivor.remove(entries)
        # The adopted slot is released once it is empty; only lock files remain there.
        assert [p.name for p in (root / f"{other_slot:02X}").iterdir()] == ["lock"]
        assert survivor.adopt_orphans() == 0


def test_sigkilled_writer_slot_is_recovered(tmp_path: Path) -> None:
    """A process that dies by SIGKILL keeps nothing locked: its slot is taken over."""
    root = tmp_path / "spool"
    code = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from kittiwake.queue import Spool
        from spool_helpers import body, commit
        spool = Spool(Path({str(root)!r})); spool.open()
        async def go():
            for i in range(3):
                print(await commit(spool, body(f"k{{i}}")), flush=True)
            w = spool.begin(); w.write(b"x" * 100000)  # half-received
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(go())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert done.returncode == -9, done.stderr
    acked = set(done.stdout.split())
    assert len(acked) == 3
    with Spool(root) as spool:
        assert {e.envelope.queue_id for e in spool.take_ready()} == acked
        assert len(spool_files(root)) == 3  # the half-received one is gone


def test_rotation_and_compaction(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root, segment_bytes=600) as spool:
        slot_dir = root / f"{spool.slot:02X}"
        stuck = run(commit(spool, body("stuck")))  # never delivered in this test
        for i in range(40):
            run(commit(spool, body(f"r{i}")))
            entries = [e for e in spool.take_ready() if e.envelope.queue_id != stuck]
            spool.remove(entries)
        # Old segments went away; the stuck record was carried forward.
        assert len(list(slot_dir.glob("log.*"))) <= 3
        assert spool.pending == 1
    with Spool(root) as spool:
        assert [e.envelope.queue_id for e in spool.take_ready()] == [stuck]


def test_list_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as spool:
        ids = [run(commit(spool, body(f"l{i}"))) for i in range(3)]
        listed = list_spool(root)
        assert [e.envelope.queue_id for e in listed] == ids
        spool.remove(spool.take_ready()[:1])
        assert [e.envelope.queue_id for e in list_spool(root)] == ids[1:]
    assert list_spool(tmp_path / "absent") == []


def test_cancelled_commit_is_still_delivered(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        woken: list[int] = []
        spool.add_listener(lambda: woken.append(1))

        async def go() -> None:
            task = asyncio.ensure_future(commit(spool, body("c")))
            await asyncio.sleep(0)  # the job is queued
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):
                if woken:
                    break
                await asyncio.sleep(0.01)

        run(go())
        assert woken
        assert len(spool.take_ready()) == 1


def test_queue_id_floor_survives_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "spool"
    with Spool(root) as spool:
        first = run(commit(spool, body("f")))
        lock = root / f"{spool.slot:02X}" / "lock"
        assert int(lock.read_bytes()) / 1000 > time.time()  # saved ahead of use
        spool.remove(spool.take_ready())
    # Restart with the wall clock set back a day: no queue ID is issued twice.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 86400)
    with Spool(root) as spool:
        later = spool.begin().queue_id
    assert later > str(first)


# -- disk full ------------------------------------------------------------------


def test_disk_full_while_writing_leaves_nothing(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "small", "64k") as mnt:
        root = mnt / "spool"
        with Spool(root, memory_threshold=4096) as spool:

            async def go() -> None:
                with pytest.raises(OSError) as info:
                    await commit(spool, b"y" * 200_000)
                assert info.value.errno == errno.ENOSPC
                # The spool keeps serving once there is room again.
                await commit(spool, body("after"))

            run(go())
            assert len(spool.take_ready()) == 1
            assert len(spool_files(root)) == 1
        with Spool(root) as spool:
            assert len(spool.take_ready()) == 1


def test_disk_full_at_commit_leaves_nothing(tmp_path: Path) -> None:
    """A message that fits in memory fails at commit (creating/writing its file)."""
    with tiny_tmpfs(tmp_path / "small", "64k") as mnt:
        root = mnt / "spool"
        with Spool(root, memory_threshold=1 << 20) as spool:

            async def go() -> None:
                with pytest.raises(OSError) as info:
                    await commit(spool, b"z" * 100_000)
                assert info.value.errno == errno.ENOSPC
                await commit(spool, body("after"))

            run(go())
            assert spool.receiving == 0  # the failed one counted off once, not twice
            assert len(spool.take_ready()) == 1
        with Spool(root) as spool:
            assert len(spool.take_ready()) == 1
            assert len(spool_files(root)) == 1


def test_disk_full_in_envelope_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the group flush fails every commit of the batch, cleanly."""
    root = tmp_path / "spool"
    real = os.pwrite
    fail = {"n": 1}

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if fail["n"] and "/log." in os.readlink(f"/proc/self/fd/{fd}"):
            fail["n"] -= 1
            real(fd, bytes(data[: len(data) // 2]), offset)  # half of it got written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with Spool(root) as spool:

        async def go() -> None:
            with pytest.raises(OSError) as info:
                await commit(spool, body("lost"))
            assert info.value.errno == errno.ENOSPC
            await commit(spool, body("after"))

        run(go())
        assert [e.envelope.size for e in spool.take_ready()] == [len(body("after"))]
    with Spool(root) as spool:
        assert len(spool.take_ready()) == 1
        assert len(spool_files(root)) == 1


# -- big messages -----------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_100mb_message_streams_without_memory_growth(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import asyncio, time
        from pathlib import Path
        from kittiwake.queue import Envelope, Spool

        def rss_kib():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

        async def main():
            spool = Spool(Path({str(tmp_path / "spool")!r})); spool.open()
            chunk = b"x" * 65535 + b"\\n"
            w = spool.begin()
            w.write(chunk)
            before = rss_kib(); peak = before
            for _ in range(100 * 16 - 1):  # 100 MiB in 64 KiB chunks, as they arrive
                w.write(chunk)
                peak = max(peak, rss_kib())
            await w.commit(Envelope(w.queue_id, "", ("a@x.test",), "::1", "h",
                                    time.time(), "ESMTP", w.size))
            peak = max(peak, rss_kib())
            print(w.size, peak - before)
            spool.close()
        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    size, growth_kib = map(int, done.stdout.split())
    assert size == 100 * 1024 * 1024
    assert growth_kib < 4096, f"RSS grew by {growth_kib} KiB"


def test_failed_syncfs_fails_the_batch_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-back error reported by the group flush's syncfs (EIO) fails every commit
    of the batch: no 250, no data file left, no record; the spool goes on serving."""
    root = tmp_path / "spool"
    real = spool_module.syncfs
    assert real is not None
    fail = {"n": 1}

    def syncfs(fd: int) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise OSError(errno.EIO, "syncfs: Input/output error")
        real(fd)

    monkeypatch.setattr(spool_module, "syncfs", syncfs)
    with Spool(root) as spool:

        async def go() -> None:
            with pytest.raises(OSError) as info:
                await commit(spool, body("lost"))
            assert info.value.errno == errno.EIO
            assert spool_files(root) == []
            await commit(spool, body("after"))

        run(go())
        assert [e.envelope.size for e in spool.take_ready()] == [len(body("after"))]
    with Spool(root) as spool:
        assert len(spool.take_ready()) == 1
        assert len(spool_files(root)) == 1


def test_sync_mode_falls_back_without_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "syncfs", None)
    assert Spool(tmp_path / "spool").sync == "file"
    with pytest.raises(ValueError, match="filesystem, file"):
        Spool(tmp_path / "spool", sync="sometimes")


def test_spool_begin_before_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(RuntimeError):
        spool.begin()
    with pytest.raises(RuntimeError):
        _ = spool.slot


def test_commit_cost_is_small(tmp_path: Path) -> None:
    """Smoke bound on the loop-side cost of a commit (the real figures are in the
    report, measured with bench_spool.py); guards against gross regressions."""
    with Spool(tmp_path / "spool") as spool:

        async def go() -> float:
            data = body("cost")
            t0 = time.process_time()
            n = 400
            sem = asyncio.Semaphore(20)

            async def one() -> None:
                async with sem:
                    await commit(spool, data)

            await asyncio.gather(*(one() for _ in range(n)))
            return (time.process_time() - t0) / n

        per_msg = run(go())
        assert isinstance(per_msg, float)
        assert per_msg < 5e-3
