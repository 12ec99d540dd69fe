"""The envelope of a spooled message, its record in a spool log segment, and the
entry the spool hands to delivery.

A record is one line: ``\\n`` + compact JSON + ``\\t`` + CRC-32 of the JSON (8 hex
digits). The line *starts* with its newline so that a record torn by a crash or a full
disk is always followed by a clean line start: the torn bytes form one line that fails
its CRC and is skipped, and the records after it still parse. JSON escapes every
control character, so neither the tab nor the newline can appear inside it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Envelope", "SpoolEntry", "decode_record", "encode_record", "iter_records"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP/LMTP transaction said about a message, kept beside its data."""

    #: the spool queue ID (12 characters, see :mod:`kittiwake.queue._qid`)
    queue_id: str
    #: the reverse-path as received, without brackets; "" for the null sender <>
    sender: str
    #: forward-paths as received, in RCPT order (the index is the recipient's number)
    recipients: tuple[str, ...]
    #: the client's IP address
    client_address: str
    #: the name the client gave in HELO/EHLO/LHLO
    helo: str
    #: Unix time (seconds) at which the message was received
    received_at: float
    #: "SMTP", "ESMTP", "ESMTPS", "ESMTPSA", "LMTP", ... (RFC 3848 ``with`` keywords)
    protocol: str
    #: bytes of message data in the spool file (trace headers included)
    size: int
    #: the SASL-authenticated user ("" if none); the mailet container's SMTPAuthUserIs
    auth_user: str = ""
    #: the client was in ``authorizedAddresses`` (SMTPIsAuthNetwork)
    auth_network: bool = False
    #: the mailet processor to start in ("" = root); set when a repository mail is
    #: reprocessed into a chosen processor
    state: str = ""
    #: why the mail is sent to ``state`` (the mailet container's ``error_message``):
    #: RemoteDelivery's failure reply for its bounce processor
    error: str = ""
    #: set on a mail a mailet put in the spool (a forward's remote copy, see
    #: ``MailetDeliverer.enqueue``): ``"<queue id> <journal index> <data path>"`` of
    #: the mail being processed when it was made. It marks the mail SentByMailet and
    #: holds it back until that mail's record of it is durable (nothing twice).
    parent: str = ""
    #: the data file starts with ``Delivered-To: <this>`` (added at reception for a
    #: single-recipient mail when the mailet container adds Delivered-To, so that the
    #: mailbox's copy is still a hard link of the spool file); the container hides it
    #: from everything else
    delivered_to: str = ""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A committed message waiting for delivery."""

    envelope: Envelope
    #: the message data file (hard-link source); read it, never write it
    data_path: str
    #: the slot that holds it
    slot: int
    #: True if it was found at start or taken over from a dead process: a delivery may
    #: already have happened, so the deliverer must check before delivering
    recovered: bool
    #: the data file's header block (up to and with its empty line) when the message
    #: was received in memory: the mailet container's header matchers read it here
    #: instead of opening the file again (three system calls and as many GIL hand-offs
    #: per message for the delivery thread). None: read the file.
    head: bytes | None = field(default=None, compare=False, repr=False)


# ensure_ascii keeps any str (even lone surrogates from surrogateescape) encodable;
# one prebuilt encoder skips json.dumps's per-call setup.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def encode_record(env: Envelope) -> bytes:
    """Return the log line for ``env`` (leading newline, no trailing newline)."""
    body = _ENCODER.encode(
        {
            "v": _VERSION,
            "id": env.queue_id,
            "from": env.sender,
            "to": env.recipients,
            "client": env.client_address,
            "helo": env.helo,
            "t": env.received_at,
            "proto": env.protocol,
            "size": env.size,
            **_optional(env),
        }
    ).encode("ascii")
    return b"\n%s\t%08x" % (body, zlib.crc32(body))


def _optional(env: Envelope) -> dict[str, Any]:
    """The fields written only when set (records stay short and older ones readable)."""
    out: dict[str, Any] = {}
    if env.auth_user:
        out["auth"] = env.auth_user
    if env.auth_network:
        out["authnet"] = True
    if env.state:
        out["state"] = env.state
    if env.error:
        out["error"] = env.error
    if env.parent:
        out["parent"] = env.parent
    if env.delivered_to:
        out["dt"] = env.delivered_to
    return out


def decode_record(line: bytes) -> Envelope | None:
    """Parse one log line (without newlines); None if it is torn, corrupt or unknown."""
    body, sep, crc = line.rpartition(b"\t")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        obj: dict[str, Any] = json.loads(body)
        if obj.get("v") != _VERSION:
            return None
        return Envelope(
            queue_id=str(obj["id"]),
            sender=str(obj["from"]),
            recipients=tuple(str(r) for r in obj["to"]),
            client_address=str(obj["client"]),
            helo=str(obj["helo"]),
            received_at=float(obj["t"]),
            protocol=str(obj["proto"]),
            size=int(obj["size"]),
            auth_user=str(obj.get("auth", "")),
            auth_network=bool(obj.get("authnet", False)),
            state=str(obj.get("state", "")),
            error=str(obj.get("error", "")),
            parent=str(obj.get("parent", "")),
            delivered_to=str(obj.get("dt", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def iter_records(data: bytes) -> Iterator[tuple[Envelope | None, bytes]]:
    """Yield ``(envelope or None, raw line)`` for every non-empty line of a segment."""
    for line in data.split(b"\n"):
        if line:
            yield decode_record(line), line
