"""Delivery: Maildir writer and journal (later: outbound SMTP, DSN bounces)."""

from kittiwake.delivery.base import Deliverer, DeliveryJob, Outcome, Status, Target
from kittiwake.delivery.journal import Journal, JournalRecord
from kittiwake.delivery.maildir import MaildirDeliverer, maildir_name

__all__ = [
    "Deliverer",
    "DeliveryJob",
    "Journal",
    "JournalRecord",
    "MaildirDeliverer",
    "Outcome",
    "Status",
    "Target",
    "maildir_name",
]
