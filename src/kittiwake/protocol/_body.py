"""Message text readers: DATA (dot-stuffed, RFC 5321 4.5.2) and BDAT (RFC 3030).

Both refuse a bare CR or LF anywhere in the text (RFC 5321 2.3.8, RFC 5322 2.3): only
CRLF ends a line and only CRLF.CRLF ends DATA, so no "smuggled" second message can be
read here or by the next hop (the 2023 SMTP smuggling class: ``\\n.\\r\\n``,
``\\r.\\r\\n``, ``\\n.\\n`` ...). Counting CR, LF and CRLF runs in C, which keeps the
check cheap: in a run of text that ends in LF, the three counts are equal exactly when
every CR is followed by LF and every LF follows a CR.
"""

from __future__ import annotations

__all__ = ["BareLineEnding", "ChunkReader", "DotReader"]

#: a line longer than this is handed on in pieces, so memory stays bounded
MAX_PENDING_LINE = 64 * 1024


class BareLineEnding(Exception):
    """A CR or LF that is not part of a CRLF pair."""


def _check_crlf(text: bytes) -> None:
    crlf = text.count(b"\r\n")
    if crlf != text.count(b"\n") or crlf != text.count(b"\r"):
        raise BareLineEnding


class DotReader:
    """Reads DATA text: undoes dot-stuffing and finds the end of data."""

    __slots__ = ("_at_line_start",)

    def __init__(self) -> None:
        self._at_line_start = True

    def read(self, buf: bytearray) -> tuple[bytes, bool]:
        """Take what can be decoded from ``buf`` (consumed bytes are removed).

        Returns:
            (message text, True when CRLF.CRLF was reached).

        Raises:
            BareLineEnding: a CR or LF outside CRLF in the text or its end.
        """
        end = buf.rfind(b"\n") + 1
        if end == 0:
            return self._read_partial_line(buf), False
        at_start = self._at_line_start
        if at_start and buf.startswith(b".\r\n"):
            del buf[:3]
            return b"", True
        seg = bytes(buf[:end])
        term = seg.find(b"\r\n.\r\n")
        if term >= 0:
            text = seg[: term + 2]
            del buf[: term + 5]
        else:
            text = seg
            del buf[:end]
            self._at_line_start = True
        _check_crlf(text)
        if at_start and text.startswith(b"."):
            text = text[1:]
        if b"\r\n." in text:
            text = text.replace(b"\r\n.", b"\r\n")
        return text, term >= 0

    def _read_partial_line(self, buf: bytearray) -> bytes:
        # No LF yet. Keep short tails (a line start may be the terminator "."), but hand on
        # long lines in pieces; a trailing CR stays, it may be the start of CRLF.
        if len(buf) < MAX_PENDING_LINE:
            if buf.find(b"\r", 0, len(buf) - 1) >= 0:  # bare now, however the reads fell
                raise BareLineEnding
            return b""
        keep = 1 if buf.endswith(b"\r") else 0
        text = bytes(buf[: len(buf) - keep])
        del buf[: len(buf) - keep]
        if b"\r" in text:
            raise BareLineEnding
        if self._at_line_start and text.startswith(b"."):
            text = text[1:]
        self._at_line_start = False
        return text


class ChunkReader:
    """Reads one BDAT chunk of exactly ``size`` octets (no dot-stuffing, RFC 3030 2),
    checking line endings across chunk boundaries of the same message."""

    __slots__ = ("_cr_pending", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self._cr_pending = False  # the previous piece ended in CR: LF must come next

    def start(self, size: int) -> None:
        self.remaining = size

    def read(self, buf: bytearray) -> bytes:
        """Take up to ``remaining`` octets from ``buf``.

        Raises:
            BareLineEnding: a CR or LF outside CRLF.
        """
        n = min(self.remaining, len(buf))
        text = bytes(buf[:n])
        del buf[:n]
        self.remaining -= n
        if not text:
            return text
        if self._cr_pending:
            if text[0] != 0x0A:
                raise BareLineEnding
            check = text[1:]
        else:
            if text[0] == 0x0A:
                raise BareLineEnding
            check = text
        self._cr_pending = check.endswith(b"\r")
        _check_crlf(check[:-1] if self._cr_pending else check)
        return text

    def finish(self) -> None:
        """The last chunk ended: a CR still waiting for its LF is bare.

        Raises:
            BareLineEnding: the message text ends in a lone CR.
        """
        if self._cr_pending:
            raise BareLineEnding
