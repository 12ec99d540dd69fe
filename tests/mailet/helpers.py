"""A mailet container over a temporary DATA, a memory store and a real Maildir
deliverer, fed with spool-like files."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from kittiwake.delivery.base import DeliveryJob, Outcome, Target
from kittiwake.delivery.journal import Journal
from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.mailet import build_container, load_spec, parse_mailetcontainer_text
from kittiwake.mailet.container import MailetDeliverer
from kittiwake.mailet.mailets import AddDeliveredToHeader
from kittiwake.mailet.message import format_field
from kittiwake.queue._envelope import Envelope
from kittiwake.server.recipients import LocalResolver
from kittiwake.storage.memory import MemoryStore

_ids = itertools.count(1)


def processors(body: str) -> str:
    """A mailetcontainer.xml with these processors plus a minimal error processor."""
    error = ""
    if 'state="error"' not in body:
        error = """<processor state="error">
          <mailet match="All" class="ToRepository">
            <repositoryPath>file://var/mail/error/</repositoryPath>
          </mailet></processor>"""
    return f"""<mailetcontainer><processors>{body}{error}</processors></mailetcontainer>"""


MESSAGE = b"Received: from x\r\nSubject: hi\r\nBcc: secret@a.test\r\n\r\nhello\r\n"


@dataclass
class Harness:
    data: Path
    xml: str | None = None
    store: MemoryStore = field(default_factory=MemoryStore)

    def __post_init__(self) -> None:
        self.store.add_domain("a.test")
        for u in ("alice@a.test", "bob@a.test", "postmaster@a.test"):
            self.store.add_user(u, None)
        self.journal = Journal(self.data / "journal")
        self.maildir = MaildirDeliverer(self.data / "mail", self.journal, hostname="mx.a.test")
        self.deliverer = self.make()

    def make(self) -> MailetDeliverer:
        spec = parse_mailetcontainer_text(self.xml) if self.xml is not None else load_spec(None)
        resolver = LocalResolver(self.store, self.store, "postmaster@a.test")
        container = build_container(
            spec,
            self.data,
            postmaster="postmaster@a.test",
            hostname="mx.a.test",
            is_local_domain=self.store.contains_domain,
            mailbox_of=resolver.resolve,
            rewrite_table=self.store.rewrite_table,
        )
        return MailetDeliverer(container, self.maildir, self.data / "mailet")

    def job(
        self,
        recipients: list[str],
        *,
        sender: str = "carol@remote.test",
        data: bytes = MESSAGE,
        auth: str = "",
        client: str = "192.0.2.1",
        recovered: bool = False,
        qid: str | None = None,
        state: str = "",
        stamp: bool = True,
    ) -> DeliveryJob:
        qid = qid or f"Q{next(_ids):011d}"
        spool = self.data / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / qid
        delivered_to = ""
        if stamp and len(recipients) == 1 and self.adds_delivered_to():
            # what the SMTP session does (server/session.py): the spool file starts
            # with the single recipient's Delivered-To
            delivered_to = recipients[0]
            data = format_field("Delivered-To", delivered_to) + data
        if not path.exists():
            path.write_bytes(data)
        env = Envelope(
            qid,
            sender,
            tuple(recipients),
            client,
            "client.test",
            time.time(),
            "ESMTPA" if auth else "ESMTP",
            len(data),
            auth_user=auth,
            state=state,
            delivered_to=delivered_to,
        )
        targets = tuple(Target(i, r, None) for i, r in enumerate(recipients))
        return DeliveryJob(qid, str(path), env.received_at, len(data), recovered, targets, env)

    def adds_delivered_to(self) -> bool:
        mailets = self.deliverer.container.mailets()
        return any(isinstance(m, AddDeliveredToHeader) for m in mailets)

    def run(self, *jobs: DeliveryJob) -> list[list[Outcome]]:
        return self.deliverer.deliver(list(jobs))

    def mailbox(self, address: str) -> list[bytes]:
        local, _, domain = address.partition("@")
        box = self.data / "mail" / domain / local
        out = []
        for sub in ("new", "cur"):
            d = box / sub
            if d.is_dir():
                out += [p.read_bytes() for p in sorted(d.iterdir())]
        return out

    def repo(self, name: str) -> list[str]:
        return self.deliverer.context.repositories.get(name).keys()
