"""Delivery status notifications (RFC 3464): the one builder of bounce messages, used
by the ``Bounce`` and ``DSNBounce`` mailets and, later, by RemoteDelivery.

The result is a ``multipart/report; report-type=delivery-status`` (RFC 6522) with three
parts: a human-readable explanation, the ``message/delivery-status`` fields (one
per-message group, one group per recipient), and the original message
(``message/rfc822``), its header only (``text/rfc822-headers``) or nothing.

Deterministic: the same inputs give the same bytes (boundary and Message-ID are derived
from the original's queue ID), so that a bounce rebuilt after a crash is the same mail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

__all__ = ["DsnRecipient", "build_dsn"]


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's line in the report."""

    address: str
    #: RFC 3464 2.3.3: failed, delayed, delivered, relayed, expanded
    action: str = "failed"
    #: RFC 3463 code, e.g. "5.1.1"
    status: str = "5.0.0"
    #: the remote server's reply or our reason (``Diagnostic-Code: smtp; ...``)
    diagnostic: str = ""
    remote_mta: str = ""


def build_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: bytes,
    queue_id: str,
    arrival: float,
    now: float,
    attachment: str = "message",
    text: str | None = None,
    subject_prefix: str = "",
) -> bytes:
    """The bounce message, CRLF line ends.

    Args:
        reporting_mta: this server's name.
        postmaster: the From: address of the bounce.
        sender: who gets it (the original reverse path).
        recipients: the recipients reported on.
        original: the original message.
        queue_id: the original's queue ID (``X-Kittiwake-Queue-ID``, boundary, Message-ID).
        arrival: when the original arrived (Unix time).
        now: the report's date (Unix time).
        attachment: ``message`` (whole), ``heads`` (header only) or ``none``.
        text: the human-readable part; a default naming the recipients otherwise.
        subject_prefix: put before the subject.
    """
    seed = hashlib.sha1(
        f"{queue_id}\0{sender}\0{','.join(r.address for r in recipients)}".encode(
            "utf-8", "surrogateescape"
        )
    ).hexdigest()
    boundary = f"=_kittiwake_{seed[:24]}"
    date = format_datetime(datetime.fromtimestamp(now, UTC))
    arrived = format_datetime(datetime.fromtimestamp(arrival, UTC))
    failed = all(r.action == "failed" for r in recipients)
    subject = "Undelivered Mail Returned to Sender" if failed else "Delivery Status Notification"
    if text is None:
        text = (
            f"This is the mail system at host {reporting_mta}.\r\n\r\n"
            "I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients. It's attached below.\r\n\r\n"
            + "".join(f"<{r.address}>: {r.diagnostic or 'delivery failed'}\r\n" for r in recipients)
        )
    human = text.replace("\r\n", "\n").replace("\n", "\r\n")
    per_message = (
        f"Reporting-MTA: dns; {reporting_mta}\r\n"
        f"X-Kittiwake-Queue-ID: {queue_id}\r\n"
        f"Arrival-Date: {arrived}\r\n"
    )
    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {r.address}\r\n"
        f"Action: {r.action}\r\n"
        f"Status: {r.status}\r\n"
        + (f"Remote-MTA: dns; {r.remote_mta}\r\n" if r.remote_mta else "")
        + (f"Diagnostic-Code: smtp; {_one_line(r.diagnostic)}\r\n" if r.diagnostic else "")
        for r in recipients
    )
    head = (
        f"From: Mail Delivery System <{postmaster}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject_prefix}{subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{seed[:20]}.{queue_id}@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f' boundary="{boundary}"\r\n'
        "\r\nThis is a MIME-encapsulated message.\r\n\r\n"
    ).encode("utf-8", "surrogateescape")
    parts = [
        head,
        (
            f"--{boundary}\r\nContent-Description: Notification\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{human}\r\n"
        ).encode("utf-8", "surrogateescape"),
        (
            f"--{boundary}\r\nContent-Description: Delivery report\r\n"
            f"Content-Type: message/delivery-status\r\n\r\n{per_message}{per_rcpt}\r\n"
        ).encode("utf-8", "surrogateescape"),
    ]
    if attachment == "heads":
        end = original.find(b"\r\n\r\n")
        headers = original if end < 0 else original[: end + 2]
        parts.append(
            f"--{boundary}\r\nContent-Description: Undelivered Message Headers\r\n"
            "Content-Type: text/rfc822-headers\r\n\r\n".encode()
            + headers
            + b"\r\n"
        )
    elif attachment != "none":
        body = original if original.endswith(b"\r\n") else original + b"\r\n"
        parts.append(
            f"--{boundary}\r\nContent-Description: Undelivered Message\r\n"
            "Content-Type: message/rfc822\r\n\r\n".encode()
            + body
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())
