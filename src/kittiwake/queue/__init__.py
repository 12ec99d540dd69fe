"""The durable spool (and, later, the outgoing queue) and the worker that empties it."""

from kittiwake.queue._envelope import Envelope
from kittiwake.queue._qid import is_queue_id, queue_id_slot, queue_id_time
from kittiwake.queue.runner import SpoolRunner
from kittiwake.queue.spool import Spool, SpoolEntry, SpoolWriter, list_spool

__all__ = [
    "Envelope",
    "Spool",
    "SpoolEntry",
    "SpoolRunner",
    "SpoolWriter",
    "is_queue_id",
    "list_spool",
    "queue_id_slot",
    "queue_id_time",
]
