"""Reading a message's header section: the ``From:`` addresses (sender identity) and
the fields a submission server adds when they are missing (RFC 6409 8.2, 8.3).

Pure functions over the octets at the start of the message text.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, getaddresses

__all__ = [
    "HEADER_SCAN_LIMIT",
    "field_values",
    "from_addresses",
    "header_complete",
    "header_fields",
    "submission_fields",
]

#: octets of message text looked at for the header section; a header longer than this
#: is judged on its first part
HEADER_SCAN_LIMIT = 256 * 1024


def header_complete(text: bytes) -> bool:
    """The header section ends within ``text`` (an empty line, RFC 5322 2.1)."""
    return text.startswith(b"\r\n") or b"\r\n\r\n" in text


def header_fields(text: bytes) -> list[tuple[str, str]]:
    """The header fields at the start of ``text``, unfolded, as (lower-case name, value).

    Lines up to the first empty line; a line starting with white space continues the
    previous field (RFC 5322 2.2.3); a line that is no field ends the header section.
    Non-UTF-8 octets are kept as surrogate escapes.
    """
    head = text.split(b"\r\n\r\n", 1)[0] if not text.startswith(b"\r\n") else b""
    fields: list[tuple[str, str]] = []
    for raw in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if raw[:1] in (" ", "\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {raw.strip()}")
            continue
        name, colon, value = raw.partition(":")
        if not colon or not name or any(c <= " " or c > "~" for c in name):
            break
        fields.append((name.lower(), value.strip()))
    return fields


def field_values(fields: list[tuple[str, str]], name: str) -> list[str]:
    """The values of every field called ``name`` (lower case)."""
    return [value for field, value in fields if field == name]


def from_addresses(fields: list[tuple[str, str]]) -> list[str]:
    """The addresses of every ``From:`` field (groups flattened; empty ones dropped)."""
    return [
        address
        for _name, address in getaddresses(field_values(fields, "from"))
        if address and "@" in address
    ]


def submission_fields(fields: list[tuple[str, str]], *, now: datetime, message_id: str) -> bytes:
    """``Date:`` and ``Message-ID:`` lines for those missing from ``fields``
    (RFC 6409 8.2 and 8.3; RFC 5322 3.6.1 and 3.6.4), or b"".

    Args:
        fields: the message's header fields (:func:`header_fields`).
        now: the time to put in ``Date:`` (timezone-aware).
        message_id: the id to use, without angle brackets (``local@host``).
    """
    names = {name for name, _ in fields}
    out = ""
    if "date" not in names:
        out += f"Date: {format_datetime(now)}\r\n"
    if "message-id" not in names:
        out += f"Message-ID: <{message_id}>\r\n"
    return out.encode("ascii")
