"""Several worker processes: one listener, one spool, limits that hold across them."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from .conftest import make_kittiwake
from .test_wire import Wire


def test_two_workers_deliver_and_share_connection_limits(tmp_path: Path) -> None:
    kw = make_kittiwake(
        tmp_path,
        "<connectionLimit>3</connectionLimit><connectionLimitPerIP>3</connectionLimitPerIP>",
        users=("alice@kittiwake.test",),
    )
    kw.env["KITTIWAKE_WORKERS"] = "2"
    kw.start()
    try:
        for i in range(20):
            with smtplib.SMTP("127.0.0.1", kw.port, timeout=10) as client:
                client.sendmail("a@remote.test", ["alice@kittiwake.test"], f"X-N: {i}\r\n\r\nx\r\n")
        assert len(kw.wait_messages("alice@kittiwake.test", 20)) == 20
        # Hold three connections; whichever worker accepts the fourth must refuse it.
        held = [Wire(kw.port) for _ in range(3)]
        for w in held:
            assert w.reply().startswith(b"220")
        for _ in range(4):  # several tries, so both workers get to accept one
            extra = Wire(kw.port)
            assert extra.reply().startswith(b"421 4.7.0")
            extra.close()
        held[0].close()
        time.sleep(0.3)
        again = Wire(kw.port)
        assert again.reply().startswith(b"220")
        log = kw.log_text()
        assert "worker 0 started" in log and "worker 1 started" in log
    finally:
        assert kw.stop() == 0
