"""A spool + runner process for the multi-process and SIGKILL tests.

    python spool_worker.py DATA PREFIX COUNT [--hold]

Commits COUNT messages (20 at a time) to ``alice@local.test``, each with an
``X-Token: PREFIX-n`` header, printing ``PREFIX-n QUEUEID`` once its commit returned
(what a client reading 250 would know), while its runner delivers. Then waits until
the spool is drained and exits 0, or with ``--hold`` keeps running (to be killed).
COUNT 0 only delivers (recovery and orphans), then exits.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from spool_helpers import body, commit

from kittiwake.delivery import Journal, MaildirDeliverer
from kittiwake.queue import Spool, SpoolRunner


async def main(data: Path, prefix: str, count: int, hold: bool) -> None:
    spool = Spool(data / "spool")
    spool.open()
    journal = Journal(data / "journal", name=f"{spool.slot:02X}")
    runner = SpoolRunner(
        spool,
        MaildirDeliverer(data / "mail", journal, hostname="mx.test"),
        lambda rcpt: rcpt.lower(),
        concurrency=2,
        sweep_interval=0.2,
    )
    await runner.start()

    async def session(first: int) -> None:  # 20 of these, like 20 SMTP sessions
        for n in range(first, count, 20):
            token = f"{prefix}-{n}"
            qid = await commit(spool, body(token))
            sys.stdout.write(f"{token} {qid}\n")
            sys.stdout.flush()

    await asyncio.gather(*(session(i) for i in range(20)))
    if hold:
        await asyncio.Event().wait()
    for _ in range(3):  # let a sweep run, in case an orphan slot appeared
        await runner.wait_idle(60)
        await asyncio.sleep(0.3)
    await runner.wait_idle(60)
    await runner.stop()
    spool.close()
    journal.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), "--hold" in sys.argv))
