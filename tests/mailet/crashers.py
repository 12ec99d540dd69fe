"""A custom mailet for crash tests: it kills its own process on one mail."""

from __future__ import annotations

import os

from kittiwake.mailet.api import Mail, Mailet, MailetConfig


class ExitOnSubject(Mailet):
    """``os._exit(70)`` (no cleanup at all, as a segfault) on a mail whose Subject is
    ``<subject>``; every other mail passes through."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.subject = config.get("subject") or "crash"

    def service(self, mail: Mail) -> None:
        if mail.message.get("Subject") == self.subject:
            os._exit(70)


class ExitOnceOnSubject(ExitOnSubject):
    """The same, the first time only: it leaves ``<marker>`` (a file) behind."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.marker = config.get("marker") or ""

    def service(self, mail: Mail) -> None:
        if mail.message.get("Subject") == self.subject and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            os._exit(70)
