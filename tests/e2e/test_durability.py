"""Durability: SIGKILL at any moment under load loses nothing whose 250 the client
read, and recovery never delivers a message twice (issue 2, point 6)."""

from __future__ import annotations

import collections
import random
import re
import smtplib
import threading
import time
from pathlib import Path

from .conftest import Kittiwake, make_kittiwake

TOKEN = re.compile(rb"X-Token: (\S+)")


def _client(port: int, name: str, acked: list[str], sent: list[str], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                while not stop.is_set():
                    token = f"{name}-{n}"
                    n += 1
                    sent.append(token)
                    body = f"X-Token: {token}\r\nSubject: load\r\n\r\n" + "x" * 1500 + "\r\n"
                    client.sendmail("load@remote.test", ["alice@kittiwake.test"], body)
                    acked.append(token)  # only reached once the client read the 250
        except (OSError, smtplib.SMTPException):
            time.sleep(0.01)


def _tokens(kw: Kittiwake) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for msg in kw.messages("alice@kittiwake.test"):
        m = TOKEN.search(msg)
        assert m is not None
        found[m.group(1).decode()] += 1
    return found


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    kw = make_kittiwake(tmp_path, users=("alice@kittiwake.test",))
    acked: list[str] = []
    sent: list[str] = []
    rng = random.Random(7)
    for cycle in range(3):
        kw.start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_client, args=(kw.port, f"c{cycle}.{i}", acked, sent, stop))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(0.5 + rng.random())
        kw.kill()  # SIGKILL: no chance to flush or clean up
        stop.set()
        for t in threads:
            t.join(timeout=10)
    # Recovery: start again and let the spool drain.
    kw.start()
    deadline = time.monotonic() + 30
    previous: collections.Counter[str] = collections.Counter()
    while time.monotonic() < deadline:
        found = _tokens(kw)
        if all(found[t] for t in acked) and found == previous:
            break  # everything acknowledged is there, and nothing moved for a while
        previous = found
        time.sleep(0.5)
    assert kw.stop() == 0
    found = _tokens(kw)
    assert len(acked) > 50, "the load generator did not get going"
    missing = [t for t in acked if found[t] == 0]
    assert missing == [], f"{len(missing)} acknowledged messages lost: {missing[:5]}"
    twice = {t: c for t, c in found.items() if c > 1}
    assert twice == {}, f"delivered more than once: {twice}"
    unexpected = set(found) - set(sent)
    assert unexpected == set()
