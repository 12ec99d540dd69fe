"""The cost of DKIMSign per mail: no key for the From: domain, RSA-2048, Ed25519, both.

Calls the mailet's ``service`` on a 2 KB message held in memory, in one thread, and
prints the best of ROUNDS rounds in milliseconds per mail. Run from the repository root::

    .venv/bin/python benchmarks/dkim_sign.py [--mails N] [--rounds R]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from kittiwake.mailet.api import Mail, MailetConfig
from kittiwake.mailet.dkim import DKIMSign
from kittiwake.mailet.dkimkeys import KeyStore
from kittiwake.mailet.message import Message

MESSAGE = (
    b"Received: from client.test by mx.example.com\r\nFrom: A <a@example.com>\r\n"
    b"To: b@remote.test\r\nSubject: hi\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26
)
CASES = (("no key", ()), ("rsa-2048", ("rsa",)), ("ed25519", ("ed25519",)))
CASES += (("rsa-2048 + ed25519", ("rsa", "ed25519")),)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=200, help="mails per round (200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the best kept (3)")
    args = parser.parse_args()
    for label, kinds in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            for i, kind in enumerate(kinds):
                KeyStore(data / "dkim").generate("example.com", f"s{i}", kind)
            mailet = DKIMSign()
            context = SimpleNamespace(data_dir=data, conf_dir=None)
            mailet.init(MailetConfig("DKIMSign", {}, context))  # type: ignore[arg-type]
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(args.mails):
                    message = Message.from_bytes(MESSAGE)
                    mailet.service(Mail("Q", "a@example.com", ["b@remote.test"], message))
                best = min(best, (time.perf_counter() - started) / args.mails)
            print(f"{label:20} {best * 1000:8.2f} ms/mail")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
