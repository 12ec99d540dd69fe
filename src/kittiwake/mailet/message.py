"""The message a mail carries: header fields editable in place, body read lazily.

The spool file holds exactly the bytes a mailbox gets, and local delivery hard-links it
(:mod:`kittiwake.delivery.maildir`). So the message is not read at all until a matcher
or mailet asks for a header, only the header block is read then, and an unchanged
message is delivered from the spool file itself. Only a change (a header added, set or
removed) makes delivery write a new file.

Header fields are kept as their raw lines (folding and bytes exactly as received), so
that an untouched field is written back byte for byte.

A spool file may start with a ``Delivered-To:`` field that is not part of the message
(the session adds it for a single-recipient mail, see ``Envelope.delivered_to``): the
message hides it (headers, size, bytes), and :meth:`Message.linkable` says whether the
file is, byte for byte, what a mailbox must get.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["Message", "format_field"]

_CHUNK = 16384
#: a header block larger than this is treated as ending here (RFC 5322 2.1.1 lines are
#: short; this bounds memory for a message that has no empty line at all)
_MAX_HEADER = 1 << 20


def format_field(name: str, value: str) -> bytes:
    """One header field, ``Name: value`` + CRLF (UTF-8, as SMTPUTF8 allows)."""
    value = value.replace("\r", " ").replace("\n", " ")
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def _split_fields(block: bytes) -> list[bytes]:
    """Raw header fields (each with its continuation lines and line ends)."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _field_name(raw: bytes) -> str:
    name, sep, _ = raw.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if sep else ""


def _matcher(name: str) -> Callable[[bytes], bool]:
    """A test for "this raw field is called ``name``" (case-insensitive), equal to
    ``_field_name(raw) == name.lower()``. The usual field, ``Name:`` with the colon
    right after the name, is recognised on its bytes, without decoding anything: the
    default flow checks every field of every message twice (RelayLimit counts
    ``Received``, RemoveMimeHeader looks for ``Bcc``)."""
    key = name.lower()
    try:
        prefix = (key + ":").encode("ascii")
    except UnicodeEncodeError:
        prefix = b""
    if not prefix or key != key.strip():
        return lambda raw: _field_name(raw) == key
    n = len(prefix) - 1

    def named(raw: bytes) -> bool:
        head = raw[: n + 1].lower()
        if head == prefix:
            return True
        # "Name :" (obsolete syntax, RFC 5322 4.5.2) and the like: the careful way
        return head[:n] == prefix[:n] and _field_name(raw) == key

    return named


def _field_value(raw: bytes) -> str:
    _, _, value = raw.partition(b":")
    text = value.decode("utf-8", "surrogateescape")
    return " ".join(text.split())  # unfold (RFC 5322 2.2.3) and trim


class Message:
    """A message in a file (the spool's), or in memory for mails made by mailets."""

    __slots__ = (
        "_body",
        "_body_offset",
        "_fields",
        "_head",
        "_size",
        "_skip",
        "delivered_to",
        "modified",
        "path",
    )

    def __init__(
        self,
        path: str | None,
        size: int,
        data: bytes | None = None,
        *,
        delivered_to: str = "",
        head: bytes | None = None,
    ) -> None:
        """Args:
        path: the file holding the message (None: ``data`` holds it).
        size: bytes in the file.
        data: the whole message, for a message made in memory.
        delivered_to: the file starts with ``Delivered-To: <this>``, which is not part
            of the message (checked when the file is read).
        head: the file's first bytes, known already (the spool's copy of the header
            block): read instead of the file if they hold the whole header.
        """
        self.path = path
        self._size = size
        self._fields: list[bytes] | None = None
        self._head = head if path is not None else None
        self._body_offset = 0
        self._body: bytes | None = None
        #: the hidden ``Delivered-To`` value ("" = none)
        self.delivered_to = delivered_to if path is not None else ""
        self._skip = len(format_field("Delivered-To", delivered_to)) if self.delivered_to else 0
        #: True once a header was changed: delivery must write these bytes
        self.modified = False
        if data is not None:
            self._parse(data, whole=True)
            self.modified = path is None

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        """A message held in memory."""
        return cls(None, len(data), data)

    # -- reading ---------------------------------------------------------------

    def _parse(self, data: bytes, *, whole: bool, base: int = 0) -> None:
        end, _sep = _header_end(data)
        if end < 0:
            if whole or len(data) >= _MAX_HEADER:
                end = len(data)
            else:
                raise _NeedMore
        self._fields = _split_fields(data[:end])
        # the empty line belongs to the body part written after the fields
        self._body_offset = base + end
        if whole:
            self._body = data[end:]

    def _load(self) -> list[bytes]:
        fields = self._fields
        if fields is not None:
            return fields
        assert self.path is not None
        head, self._head = self._head, None
        if head is not None and self._parse_head(head):
            assert self._fields is not None
            return self._fields
        buf = b""
        # os.open/os.read rather than open(): three system calls instead of six or
        # seven (no fstat, isatty ioctl, lseek) for the usual header under 16 KB; each
        # one is also a GIL hand-off for the delivery thread.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            first = True
            while True:
                chunk = os.read(fd, _CHUNK)
                if first and self._skip:
                    first = False
                    if chunk.startswith(format_field("Delivered-To", self.delivered_to)):
                        chunk = chunk[self._skip :]
                    else:  # not there after all: the file is the message
                        self.delivered_to, self._skip = "", 0
                buf += chunk
                try:
                    self._parse(buf, whole=not chunk, base=self._skip)
                    break
                except _NeedMore:
                    continue
        finally:
            os.close(fd)
        assert self._fields is not None
        return self._fields

    def _parse_head(self, head: bytes) -> bool:
        """Parse the header from ``head`` (the file's first bytes); False if they do
        not hold all of it (the file is read then, as if ``head`` were not known)."""
        skip = self._skip
        if skip and not head.startswith(format_field("Delivered-To", self.delivered_to)):
            return False  # the file's own reading settles what the prefix is
        try:
            self._parse(head[skip:], whole=False, base=skip)
        except _NeedMore:
            return False
        return True

    def headers(self) -> list[tuple[str, str]]:
        """Every field as (lower-case name, unfolded value), in order."""
        return [(_field_name(f), _field_value(f)) for f in self._load() if _field_name(f)]

    def get_all(self, name: str) -> list[str]:
        """The values of every field called ``name`` (case-insensitive)."""
        named = _matcher(name)
        return [_field_value(f) for f in self._load() if named(f)]

    def get(self, name: str) -> str | None:
        """The first value of ``name``, None if absent."""
        values = self.get_all(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        named = _matcher(name)
        return any(named(f) for f in self._load())

    def count(self, name: str) -> int:
        named = _matcher(name)
        return sum(1 for f in self._load() if named(f))

    # -- changing --------------------------------------------------------------

    def add_header(self, name: str, value: str) -> None:
        """Add a field after the others (James ``addHeader``)."""
        self._load().append(format_field(name, value))
        self.modified = True

    def prepend_header(self, name: str, value: str) -> None:
        """Add a field before the others (trace fields: RFC 5321 4.4)."""
        self._load().insert(0, format_field(name, value))
        self.modified = True

    def prepend_raw_field(self, field: bytes) -> None:
        """Add a field given as its exact bytes (folded, each line ending in CRLF) before
        the others: a DKIM-Signature must go out as it was signed (RFC 6376 3.5)."""
        if not field.endswith(b"\r\n") or not _field_name(field):
            raise ValueError("a header field ends with CRLF and has a name")
        self._load().insert(0, field)
        self.modified = True

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one (James ``setHeader``): in place of the
        first, or added at the end."""
        fields = self._load()
        key = name.lower()
        new = format_field(name, value)
        out: list[bytes] = []
        placed = False
        for f in fields:
            if _field_name(f) == key:
                if not placed:
                    out.append(new)
                    placed = True
                continue
            out.append(f)
        if not placed:
            out.append(new)
        self._fields = out
        self.modified = True

    def remove_header(self, name: str) -> bool:
        """Remove every ``name`` field; True if there was one."""
        fields = self._load()
        named = _matcher(name)
        kept = [f for f in fields if not named(f)]
        if len(kept) == len(fields):
            return False
        self._fields = kept
        self.modified = True
        return True

    # -- writing ---------------------------------------------------------------

    def header_bytes(self) -> bytes:
        return b"".join(self._load())

    def body_bytes(self) -> bytes:
        """Everything after the header fields (the empty line included)."""
        self._load()
        if self._body is not None:
            return self._body
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(self._body_offset)
            return fh.read()

    def linkable(self, extra: list[tuple[str, str]] | None = None) -> bool:
        """True if the file holds exactly ``as_bytes(extra)``: a mailbox may get the
        file itself (a hard link) instead of a copy."""
        if self.path is None or self.modified:
            return False
        if self._skip:
            self._load()  # checks that the hidden field is there
        if self._skip:
            return extra == [("Delivered-To", self.delivered_to)]
        return not extra

    def as_bytes(self, extra: list[tuple[str, str]] | None = None) -> bytes:
        """The whole message as it is now, ``extra`` fields first."""
        if self.linkable(extra):
            assert self.path is not None
            with open(self.path, "rb") as fh:
                return fh.read()
        head = b"".join(format_field(n, v) for n, v in extra or ())
        return head + self.header_bytes() + self.body_bytes()

    @property
    def size(self) -> int:
        """Bytes of the message (without a hidden ``Delivered-To``)."""
        if not self.modified:
            return self._size - self._skip
        return len(self.header_bytes()) + self._body_size()

    @property
    def file_size(self) -> int:
        """Bytes in the file (a hidden ``Delivered-To`` included)."""
        return self._size

    def _body_size(self) -> int:
        if self._body is not None:
            return len(self._body)
        if self.path is not None:
            return os.stat(self.path).st_size - self._body_offset
        return 0

    def copy(self) -> Message:
        """An independent copy (changes to one do not show in the other)."""
        other = Message.__new__(Message)
        other.path = self.path
        other._size = self._size
        other._fields = None if self._fields is None else list(self._fields)
        other._head = self._head
        other._body_offset = self._body_offset
        other._body = self._body
        other.modified = self.modified
        other.delivered_to = self.delivered_to
        other._skip = self._skip
        return other


class _NeedMore(Exception):
    pass


def _header_end(data: bytes) -> tuple[int, int]:
    """Offset where the header block ends (the empty line starts), and 1 if found."""
    if data.startswith((b"\r\n", b"\n")):
        return 0, 1
    best = -1
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best = i + len(sep) // 2
    return (best, 1) if best >= 0 else (-1, 0)
