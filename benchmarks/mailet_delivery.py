"""CPU per single-recipient message of the mailet container's delivery path, in process.

James's default flow (built-in mailetcontainer.xml) over N spool-like files, batches of
8, into one Maildir with a real journal; prints CPU and wall time per message and how
many deliveries are hard links of their spool file. Run from the repository root::

    .venv/bin/python benchmarks/mailet_delivery.py [N]

To compare with another checkout, put its ``src`` first: ``PYTHONPATH=/other/src``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from kittiwake.delivery.base import DeliveryJob, Target
from kittiwake.delivery.journal import Journal
from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.mailet import build_container, load_spec
from kittiwake.mailet.container import MailetDeliverer
from kittiwake.queue._envelope import Envelope
from kittiwake.server.recipients import LocalResolver
from kittiwake.storage.memory import MemoryStore

BATCH = 8
RCPT = "bob@a.test"
BODY = (
    b"Return-Path: <c@r.test>\r\nReceived: from x by y; now\r\nSubject: hi\r\n\r\n"
    + b"x" * 2048
    + b"\r\n"
)


def main(n: int) -> None:
    # a checkout whose session writes the single recipient's Delivered-To (this one)
    stamp = "delivered_to" in {f.name for f in dataclasses.fields(Envelope)}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        data = Path(tmp)
        store = MemoryStore()
        store.add_domain("a.test")
        store.add_user(RCPT, None)
        resolver = LocalResolver(store, store, "postmaster@a.test")
        container = build_container(
            load_spec(None),
            data,
            postmaster="postmaster@a.test",
            hostname="mx.a.test",
            is_local_domain=store.contains_domain,
            mailbox_of=resolver.resolve,
            rewrite_table=store.rewrite_table,
        )
        maildir = MaildirDeliverer(data / "mail", Journal(data / "journal"), hostname="mx.a.test")
        deliverer = MailetDeliverer(container, maildir, data / "mailet")
        (data / "spool").mkdir()
        jobs = []
        for i in range(n):
            qid = f"Q{i:011d}"
            raw = (f"Delivered-To: {RCPT}\r\n".encode() if stamp else b"") + BODY
            path = data / "spool" / qid
            path.write_bytes(raw)
            extra = {"delivered_to": RCPT} if stamp else {}
            env = Envelope(qid, "c@r.test", (RCPT,), "192.0.2.1", "c", time.time(), "ESMTP",
                           len(raw), **extra)  # fmt: skip
            target = (Target(0, RCPT, None),)
            jobs.append(DeliveryJob(qid, str(path), env.received_at, len(raw), False, target, env))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(0, n, BATCH):
            deliverer.deliver(jobs[i : i + BATCH])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        new = data / "mail" / "a.test" / "bob" / "new"
        links = sum(1 for p in new.iterdir() if p.stat().st_nlink == 2)
        print(
            f"delivered_to_stamp={stamp} cpu/msg={cpu / n * 1e6:.0f}us "
            f"wall/msg={wall / n * 1e6:.0f}us hard-linked={links}/{n}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
