"""FailureCounts: a mail in the container when its process dies is counted once, read
from the dead process's in-flight file (memory-mapped, or written with pwrite when the
list outgrows the map)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kittiwake.delivery.base import DeliveryJob
from kittiwake.mailet.failures import FailureCounts

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _job(qid: str, data: Path, recovered: bool) -> DeliveryJob:
    return DeliveryJob(qid, str(data), 0.0, 1, recovered, ())


@pytest.mark.parametrize("busy", [1, 120])  # one mail: in the map; 120: past its 4 KiB
def test_mails_in_the_container_of_a_dead_process_are_counted(tmp_path: Path, busy: int) -> None:
    spool = tmp_path / ("spool-with-a-rather-long-directory-name-" + "x" * 40)
    spool.mkdir()
    qids = [f"0NGXY7B{n:05d}" for n in range(busy)]
    for qid in qids:
        (spool / qid).write_bytes(b"message")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {SRC!r})
        from pathlib import Path
        from kittiwake.delivery.base import DeliveryJob
        from kittiwake.mailet.failures import FailureCounts
        counts = FailureCounts(Path({str(tmp_path / "mailet")!r}))
        for qid in {qids!r}:
            counts.begin(DeliveryJob(qid, {str(spool)!r} + "/" + qid, 0.0, 1, False, ()))
        os._exit(0)  # dies with every mail in the container: no close, no unlink
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    counts = FailureCounts(tmp_path / "mailet")
    try:
        assert [counts.count(_job(q, spool / q, True)) for q in qids] == [1] * busy
        # harvested once: the dead process's file is gone, nobody counts it again
        again = FailureCounts(tmp_path / "mailet")
        assert again.count(_job(qids[0], spool / qids[0], True)) == 1
        again.close()
    finally:
        counts.close()
    assert list((tmp_path / "mailet" / "inflight").iterdir()) == []


def test_a_finished_mail_is_not_counted(tmp_path: Path) -> None:
    data = tmp_path / "0NGXY7B00001"
    data.write_bytes(b"message")
    counts = FailureCounts(tmp_path / "mailet")
    job = _job(data.name, data, False)
    counts.begin(job)
    counts.end(job)
    counts.flush()
    content = counts.path.read_bytes()
    assert content.strip() == b""  # blanks over the ended mail's line
    counts.close()
