"""Message: the header read from the spool's in-memory copy or from the file."""

from __future__ import annotations

from pathlib import Path

from kittiwake.mailet.message import Message, format_field

HEADER = b"Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\n"
DATA = HEADER + b"body line\r\n"


def test_head_is_read_instead_of_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-there")  # opening it would raise
    message = Message(missing, len(DATA), head=HEADER)
    assert message.count("received") == 1
    assert message.get("subject") == "hi"


def test_head_without_the_whole_header_falls_back_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(DATA)
    message = Message(str(path), len(DATA), head=HEADER[:20])
    assert [name for name, _ in message.headers()] == ["received", "subject"]
    assert message.body_bytes() == b"\r\nbody line\r\n"  # the empty line included


def test_head_with_the_hidden_delivered_to(tmp_path: Path) -> None:
    prefix = format_field("Delivered-To", "a@x.test")
    path = tmp_path / "m"
    path.write_bytes(prefix + DATA)
    message = Message(str(path), len(prefix + DATA), delivered_to="a@x.test", head=prefix + HEADER)
    assert message.count("delivered-to") == 0  # hidden: not part of the message
    assert message.get("subject") == "hi"
    assert message.body_bytes() == b"\r\nbody line\r\n"  # the empty line included
    # a head that does not start with the prefix leaves the decision to the file
    other = Message(str(path), len(prefix + DATA), delivered_to="b@x.test", head=HEADER)
    assert other.count("delivered-to") == 1
    assert other.delivered_to == ""  # the file does not start with b's field
